"""Jobs: the only place that wires a study config, a model, a solver and storage together.

config       study-config validation (JSON Schema + the checks a schema cannot express)
plan         the study matrix -> cells, shards, job groups, paths, job specs (pure, no torch)
spec         JobSpec / RunSpec / ModelConfig: what one job computes, typed; to_dict / from_dict
environment  the job's process: world size, device, deterministic kernels
checkpoint   solver-state checkpoints: atomic save with sha256, resume only by the same run
shard        ShardJob, the checkpointable submitit job that solves and stores one shard's runs
launch       submit a job spec through submitit (local or SLURM), follow it, re-attach after a driver crash

Models come from parataa.models.registry (the one model builder), results go through parataa.storage.
"""
