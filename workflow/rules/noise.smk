# Pre-sampled noise: one bundle per (model shape, step count, seed shard), drawn on the CPU in float64.
# Cheap, so it runs on the driver; sampler-independent (DDIM simply ignores the per-step noise). The state
# shape is looked up when the rule runs (not while the DAG is built), so dry runs need no model.


rule noise:
    output:
        PATHS["noise"],
    log:
        PATHS["log_noise"],
    params:
        seeds=lambda wc: ",".join(map(str, shard_seeds(wc))),
        # sorted: the order a config lists options in changes no noise
        options=lambda wc: json.dumps(plan.model_spec(config, wc.model)["options"], sort_keys=True),
        # a weights folder's own config gives the state shape (a checkpoint of another resolution)
        path=lambda wc: ["--model-path", plan.model_spec(config, wc.model)["path"]]
        if plan.model_spec(config, wc.model).get("path")
        else [],
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        '"$PARATAA_PYTHON" -m parataa.jobs noise {output:q} --seeds {params.seeds:q} --steps {wildcards.steps:q} '
        "--model {wildcards.model:q} --options {params.options:q} {params.path:q} > {log:q} 2>&1"
