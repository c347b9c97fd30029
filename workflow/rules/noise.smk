# Pre-sampled noise: one bundle per (model shape, step count, seed shard), drawn on the CPU in float64.
# Cheap, so it runs on the driver; sampler-independent (DDIM simply ignores the per-step noise). The state
# shape is looked up when the rule runs (not while the DAG is built), so dry runs need no model.


rule noise:
    output:
        PATHS["noise"],
    log:
        PATHS["log_noise"],
    params:
        py=PYTHON,
        seeds=lambda wc: ",".join(map(str, shard_seeds(wc))),
        options=lambda wc: shlex.quote(json.dumps(plan.model_spec(config, wc.model)["options"])),
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "{params.py} -m parataa.jobs noise {output} --seeds {params.seeds} --steps {wildcards.steps} "
        "--model {wildcards.model} --options {params.options} > {log} 2>&1"
