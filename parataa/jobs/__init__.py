"""Jobs: the only place that wires a study config, a model, a solver and storage together.

plan     the study matrix -> cells, shards, job groups, paths, job specs (pure)
models   models by name: (denoiser, schedule, state shape)
shard    ShardJob, the checkpointable submitit job that solves and stores one shard's runs
launch   submit a job spec through submitit (local or SLURM), follow it, re-attach after a driver crash
"""
