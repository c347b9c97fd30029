# Sampling. The sequential baseline of each (model, sampler, steps, shard) is its own job; the parallel cells
# of the same shard wait for it (their err_max / err_rms / psnr are distances to its x0) and are packed
# `runs_per_job` at a time into job groups. Each rule hands its spec to parataa.jobs.launch, which runs it
# through submitit on the executor the profile names (resources.executor) and blocks until it ends.
#
# A job asks for what it uses: the sequential baseline is one process (one GPU on a CUDA study), a job group
# `world_size` processes with one GPU each. The profile may override either per rule (set-resources).


rule baseline:
    input:
        noise=PATHS["noise"],
        stale=force_stale,
    output:
        PATHS["baseline"],
    log:
        PATHS["log_baseline"],
    params:
        spec=lambda wc: canonical(job_of("baseline", wc).spec),
        record=lambda wc: record_path("baseline", wc),
        receipt=lambda wc: job_of("baseline", wc).record,
        folder=PATHS["submitit"],
    resources:
        tasks_per_node=1,
        gpus_per_node=gpus_for(1),
    conda:
        "../../environment.yml"
    script:
        "../scripts/run_job.py"


rule sample:
    input:
        noise=PATHS["noise"],
        baseline=PATHS["baseline"],
        stale=force_stale,
    output:
        PATHS["group"],
    log:
        PATHS["log_sample"],
    params:
        spec=lambda wc: canonical(job_of("sample", wc).spec),
        record=lambda wc: record_path("group", wc),
        folder=PATHS["submitit"],
    resources:
        tasks_per_node=config["world_size"],
        gpus_per_node=gpus_for(-(-config["world_size"] // config["ranks_per_gpu"])),  # ranks_per_gpu share one
    conda:
        "../../environment.yml"
    script:
        "../scripts/run_job.py"
