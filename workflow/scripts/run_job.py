# Snakemake `script:` of the baseline and sample rules. A script (not `run:`) runs in its own process's main
# thread, so Ctrl-C / SIGTERM reach the launcher, which then cancels the cluster job.
import sys
from pathlib import Path

from parataa.jobs.launch import submit_and_wait
from parataa.jobs.spec import JobSpec
from parataa.jobs.verify import job_record
from parataa.storage import atomic_write_json

sm = snakemake  # noqa: F821 - injected by Snakemake
planned = JobSpec.from_dict(sm.params.spec)
spec = planned.absolute()  # the cluster job may start in another directory
Path(sm.log[0]).parent.mkdir(parents=True, exist_ok=True)
logfile = open(sm.log[0], "a", buffering=1)  # noqa: SIM115 - open for the whole script


def log(line: str) -> None:
    # Both: the console shows a live status per shard; the log keeps it with the rule.
    print(line, file=sys.stderr, flush=True)
    logfile.write(line + "\n")


out = Path(sm.output[0])
if out.name == "manifest.json":
    # The baseline's old record goes before its run is rewritten: the verification another Snakemake (even -n)
    # runs meanwhile then checks the run in full instead of against a record that no longer describes it.
    Path(sm.params.receipt).unlink(missing_ok=True)
try:
    summary = submit_and_wait(
        spec,
        resources=sm.resources,
        folder=sm.params.folder,
        record=sm.params.record,
        name=spec.name.replace("/", "_"),
        log=log,
    )
except KeyboardInterrupt as e:  # SIGINT / SIGTERM: the launcher cancelled the job; no output is written
    log(f"[launch] interrupted ({e})")
    sys.exit(130)
# The record of what this job made: the spec it was made for (paths relative to the study's results directory)
# and every run verified in full now, with the sizes and mtimes that let the next plan check it cheaply
# (parataa.jobs.verify). A group's record is the rule's output; a baseline's output is
# its run's manifest, and its record lies beside the group records.
where = sm.params.receipt if out.name == "manifest.json" else out
record = job_record(
    summary["runs_dirs"],
    record=where,
    root=Path(spec.results_dir) / spec.study,
    spec=planned.portable(),
    name=spec.name,
    job_id=summary.get("job_id"),
    wall_s=summary.get("wall_s"),
    peak_gpu_memory_gib=summary.get("peak_gpu_memory_gib"),
    solve_peak_gpu_memory_gib=summary.get("solve_peak_gpu_memory_gib"),
)
atomic_write_json(where, record)
