# Sampling. The sequential baseline of each (model, sampler, steps, shard) is its own job; the parallel cells
# of the same shard wait for it (their err_max / err_rms / psnr are distances to its x0) and are packed
# `runs_per_job` at a time into job groups. Each rule hands its spec to parataa.jobs.launch, which runs it
# through submitit on the executor the profile names (resources.executor) and blocks until it ends.


rule baseline:
    input:
        noise=PATHS["noise"],
    output:
        PATHS["baseline"],
    log:
        PATHS["log_baseline"],
    params:
        spec=lambda wc: plan.baseline_spec(config, wc.model, wc.sampler, int(wc.steps), int(wc.shard)).to_dict(),
        record=lambda wc: record_path("baseline", wc),
        folder=PATHS["submitit"],
    conda:
        "../../environment.yml"
    script:
        "../scripts/run_job.py"


rule sample:
    input:
        noise=PATHS["noise"],
        baseline=PATHS["baseline"],
    output:
        PATHS["group"],
    log:
        PATHS["log_sample"],
    params:
        spec=lambda wc: plan.group_spec(
            config, wc.model, wc.sampler, int(wc.steps), int(wc.shard), int(wc.group)
        ).to_dict(),
        record=lambda wc: record_path("group", wc),
        folder=PATHS["submitit"],
    conda:
        "../../environment.yml"
    script:
        "../scripts/run_job.py"
