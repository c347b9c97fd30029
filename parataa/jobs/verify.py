"""Job records, and the check a plan runs on them: was a finished job made for the spec the config asks for now,
and are the runs it vouches for still there and intact?

Snakemake sees only the outputs it declared: a baseline's `manifest.json` and a job group's record
`jobs/<model>/<sampler>-<steps>/shard-<k>/group-<g>.json`; its own metadata (.snakemake/) is lost with a fresh
clone or a copied results dir. When a job finishes, the rule (workflow/scripts/run_job.py) writes a record
holding the job's portable spec (`JobSpec.portable`: every path relative to the study's results directory) and,
per run, its directory (relative to the study's results directory, as `root` says from the record's folder),
the sha256 of its manifest and the size and mtime of every file, after verifying every hash. A plan
(`parataa.jobs.plan.Plan.stale`) calls `check_record` for every finished job: a record made for another spec,
or a run whose files changed size or mtime and no longer verify in full against its manifest
(`parataa.storage.read_manifest`), makes the job run again (Snakemake's forcerun, set by the workflow). Nothing
is deleted, in a dry run or otherwise: the job recomputes exactly the runs that fail verification.

Torch-free: the workflow imports it while building the DAG.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import storage

__all__ = ["run_receipt", "job_record", "run_dirs", "check_run", "check_record"]


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def run_receipt(run_dir: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Verify a run in full (every hash) and return what a later, cheap check compares against: its directory
    (relative to `root` when given), the sha256 of its manifest and [size, mtime_ns] of the manifest and of every
    file it lists. Raises parataa.storage.CorruptRunError when the run does not verify."""
    d = Path(run_dir)
    manifest = storage.read_manifest(d)
    names = ["manifest.json", *sorted(manifest["files"])]
    return {
        "dir": _rel(d, root),
        "manifest_sha256": storage.sha256_file(d / "manifest.json"),
        "files": {n: _stat(d / n) for n in names},
    }


def _rel(path: str | Path, root: str | Path | None) -> str:
    if root is None:
        return str(path)
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def job_record(
    run_dirs: Iterable[str | Path],
    record: str | Path | None = None,
    root: str | Path | None = None,
    spec: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The record a finished job leaves at `record`: `fields` (name, job id, wall time, ...), the job's portable
    `spec`, `root` (the study's results directory, relative to the record's folder), `runs_dirs` (relative to
    root) and one run_receipt per run. Without `record` and `root`, paths stay as given."""
    dirs = [Path(d) for d in run_dirs]
    rel_root = None if record is None or root is None else _rel(root, Path(record).parent)
    out: dict[str, Any] = {**fields}
    if rel_root is not None:
        out["root"] = rel_root
    if spec is not None:
        out["spec"] = dict(spec)
    out["runs_dirs"] = [_rel(d, root) for d in dirs]
    out["runs"] = [run_receipt(d, root) for d in dirs]
    return out


def _base(record_path: Path, record: Mapping[str, Any]) -> Path:
    """The folder a record's run directories are relative to (its study's results directory)."""
    return Path(os.path.normpath(record_path.parent / str(record.get("root", "."))))


def run_dirs(record_path: str | Path) -> list[Path]:
    """The run directories a job record lists, resolved against the record's own location."""
    record_path = Path(record_path)
    record = json.loads(record_path.read_text())
    base = _base(record_path, record) if "root" in record else Path()
    return [base / d for d in record["runs_dirs"]]


def check_run(entry: Mapping[str, Any], base: str | Path = ".") -> str | None:
    """None when the run of a record entry is intact; otherwise what is wrong with it. `base`: the folder the
    entry's directory is relative to."""
    d = Path(base) / entry["dir"]
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


def check_record(path: str | Path, spec: Mapping[str, Any] | None = None) -> list[str]:
    """The problems of a job record (empty: the job is done): with `spec` (a JobSpec.portable()), a record made
    for another spec is one, naming the first fields that differ; then every run it vouches for must be intact."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: no job record (the job's runs cannot be vouched for); the job runs again"]
    try:
        record = json.loads(path.read_text())
        entries = record.get("runs") or [{"dir": d} for d in record["runs_dirs"]]
        dirs = [e["dir"] for e in entries]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{path}: unreadable job record ({e})"]
    if spec is not None and record.get("spec") != spec:
        return [f"{path}: made for another spec ({_differs(record.get('spec'), spec)})"]
    if not dirs:
        return [f"{path}: the job record lists no runs"]
    base = _base(path, record) if "root" in record else Path()
    return [p for p in (check_run(e, base) for e in entries) if p]


def _differs(old: Any, new: Mapping[str, Any], where: str = "") -> str:
    """The first few fields in which a recorded spec differs from the wanted one, as `field: old -> new`."""
    if not isinstance(old, Mapping):
        return "the record holds no spec"
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.append(_differs(a, b, f"{where}{k}."))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            pairs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
            nested = [_differs(x, y, f"{where}{k}[{i}].") for i, x, y in pairs if isinstance(x, Mapping)]
            out += nested or [f"{where}{k}: {a!r} -> {b!r}"]
        else:
            out.append(f"{where}{k}: {a!r} -> {b!r}")
        if len(out) >= 3:
            break
    return "; ".join(out[:3])
