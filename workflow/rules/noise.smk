# Pre-sampled noise: one bundle per (model shape, step count, seed shard), drawn on the CPU in float64.
# Cheap, so it runs on the driver; sampler-independent (DDIM simply ignores the per-step noise).


rule noise:
    output:
        PATHS["noise"],
    params:
        seeds=lambda wc: ",".join(map(str, shard_seeds(wc))),
        shape=lambda wc: ",".join(
            map(str, sample_shape(wc.model, plan.model_spec(config, wc.model)["options"]))
        ),
    localrule: True
    shell:
        "python -m parataa.jobs noise {output} --seeds {params.seeds} --steps {wildcards.steps} "
        "--shape {params.shape}"
