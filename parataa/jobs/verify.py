"""Job records, and the check the workflow runs before planning: are the runs a finished job vouches for still
there and intact?

Snakemake sees only the outputs it declared: a baseline's `manifest.json` and a job group's record
`jobs/<model>/<sampler>-<steps>/shard-<k>/group-<g>.json`. A deleted run directory, a deleted file or a flipped
byte inside a run leaves those in place, so Snakemake would call the study up to date. When a job finishes, the
rule (workflow/scripts/run_job.py) writes a record listing each run's directory, the sha256 of its manifest
and the size and mtime of every file, after verifying every hash. Before planning, the workflow
(workflow/rules/common.smk) calls `invalidate_damaged`: a run whose files all keep their recorded size and
mtime is intact; any other is verified in full against its manifest (`parataa.storage.read_manifest`). A job
with a missing or damaged run loses its declared output (the group record; for a baseline, the run's own
manifest, which no longer vouches for its files), so Snakemake plans it again, and the job recomputes exactly
the runs that fail verification. This also happens in a dry run: the record removed is a claim that is no
longer true; run data is never touched.

Torch-free: the workflow imports it while building the DAG.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import storage

__all__ = ["run_receipt", "job_record", "check_run", "check_record", "invalidate_damaged"]


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def run_receipt(run_dir: str | Path) -> dict[str, Any]:
    """Verify a run in full (every hash) and return what a later, cheap check compares against: its directory,
    the sha256 of its manifest and [size, mtime_ns] of the manifest and of every file it lists.
    Raises parataa.storage.CorruptRunError when the run does not verify."""
    d = Path(run_dir)
    manifest = storage.read_manifest(d)
    names = ["manifest.json", *sorted(manifest["files"])]
    return {
        "dir": str(d),
        "manifest_sha256": storage.sha256_file(d / "manifest.json"),
        "files": {n: _stat(d / n) for n in names},
    }


def job_record(run_dirs: Iterable[str | Path], **fields: Any) -> dict[str, Any]:
    """The record a finished job leaves: `fields` (name, job id, wall time, ...), `runs_dirs` and one
    run_receipt per run."""
    dirs = [str(d) for d in run_dirs]
    return {**fields, "runs_dirs": dirs, "runs": [run_receipt(d) for d in dirs]}


def check_run(entry: Mapping[str, Any]) -> str | None:
    """None when the run of a record entry is intact; otherwise what is wrong with it."""
    d = Path(entry["dir"])
    stats = entry.get("files")
    if stats and all(_stat(d / name) == list(st) for name, st in stats.items()):
        return None  # nothing changed since the job verified every hash
    try:
        storage.read_manifest(d)
    except storage.CorruptRunError as e:
        return str(e)
    recorded = entry.get("manifest_sha256")
    if recorded and storage.sha256_file(d / "manifest.json") != recorded:
        return f"{d / 'manifest.json'}: differs from the one the job wrote (its sha256 is not the job record's)"
    return None


def check_record(path: str | Path) -> list[str]:
    """The problems of every run a job record vouches for (empty: all intact)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        entries = record.get("runs") or [{"dir": d} for d in record["runs_dirs"]]
        dirs = [e["dir"] for e in entries]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{path}: unreadable job record ({e})"]
    if not dirs:
        return [f"{path}: the job record lists no runs"]
    return [p for p in (check_run(e) for e in entries) if p]


def invalidate_damaged(
    baselines: Iterable[tuple[str | Path, str | Path]], groups: Iterable[str | Path]
) -> list[str]:
    """Remove the declared output of every finished job whose runs are missing or damaged, so that Snakemake
    plans the job again. `baselines`: (the baseline run's manifest.json, its record) pairs; `groups`: job-group
    records. Outputs that do not exist (jobs not run yet) are skipped. Returns one line per job invalidated."""
    lines = []
    for manifest, record in baselines:
        manifest, record = Path(manifest), Path(record)
        if not manifest.exists():
            continue
        if record.exists():
            problems = check_record(record)
        else:  # a baseline finished before records were written: verify it in full
            problem = check_run({"dir": str(manifest.parent)})
            problems = [problem] if problem else []
        if problems:
            _remove(manifest)
            lines.append(f"[verify] baseline {manifest.parent}: {problems[0]}; the baseline is planned again")
    for rec in groups:
        rec = Path(rec)
        if not rec.exists():
            continue
        problems = check_record(rec)
        if problems:
            _remove(rec)
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            lines.append(f"[verify] job group {rec}: {problems[0]}{more}; the job is planned again")
    return lines


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
