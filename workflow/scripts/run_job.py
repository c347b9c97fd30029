# Snakemake `script:` of the baseline and sample rules. A script (not `run:`) runs in its own process's main
# thread, so Ctrl-C / SIGTERM reach the launcher, which then cancels the cluster job.
import sys
from pathlib import Path

from parataa.jobs.launch import submit_and_wait
from parataa.jobs.spec import JobSpec
from parataa.storage import atomic_write_json, read_manifest, sha256_file

sm = snakemake  # noqa: F821 - injected by Snakemake
spec = JobSpec.from_dict(sm.params.spec).absolute()  # the cluster job may start in another directory
Path(sm.log[0]).parent.mkdir(parents=True, exist_ok=True)
logfile = open(sm.log[0], "a", buffering=1)  # noqa: SIM115 - open for the whole script


def log(line: str) -> None:
    # Both: the console shows a live status per shard; the log keeps it with the rule.
    print(line, file=sys.stderr, flush=True)
    logfile.write(line + "\n")


summary = submit_and_wait(
    spec,
    resources=sm.resources,
    folder=sm.params.folder,
    record=sm.params.record,
    name=spec.name.replace("/", "_"),
    log=log,
)
out = Path(sm.output[0])
if out.name == "manifest.json":
    read_manifest(out.parent)  # the job wrote it; make sure it verifies before Snakemake moves on
else:
    runs = []
    for d in summary["runs_dirs"]:
        read_manifest(d)
        runs.append({"dir": d, "manifest_sha256": sha256_file(Path(d) / "manifest.json")})
    atomic_write_json(
        out,
        {
            "name": spec.name,
            "job_id": summary.get("job_id"),
            "runs": runs,
            "runs_dirs": summary["runs_dirs"],
            "wall_s": summary.get("wall_s"),
        },
    )
