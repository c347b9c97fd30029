"""Manifests of stored results: hashing, atomic writes, and the one verification every reader applies.

A run (or aggregate) directory holds data files and a `manifest.json` that lists the sha256 of each of them
(`files`) and, under `manifest_sha256`, the sha256 of the manifest's own canonical JSON without that key
(`canonical_json`: sorted keys, no whitespace). So every byte a reader uses is covered by a hash: a data file by
its entry in `files`, every manifest field (config, schedule, baseline, files itself) by `manifest_sha256`.

`verify` is the check shared by the writer's reader (`parataa.storage.read_manifest`) and the analysis
(`analysis.loaders.verify_run`): the manifest exists and parses, has the expected format, its own hash
matches, it lists the required files, every listed name is a plain file name inside the directory, and every
listed file exists with the recorded sha256. Anything else raises `ManifestError` (or the caller's subclass)
naming the directory and the reason.

This module imports neither torch nor numpy, so the analysis can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST",
    "DIGEST_KEY",
    "RUN_FORMAT",
    "AGGREGATE_FORMAT",
    "RUN_REQUIRED_FILES",
    "FIDELITY_COLUMNS",
    "ManifestError",
    "sha256_bytes",
    "sha256_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "remove_stale_temporaries",
    "to_json",
    "canonical_json",
    "manifest_digest",
    "seal",
    "verify",
]

MANIFEST = "manifest.json"
DIGEST_KEY = "manifest_sha256"
RUN_FORMAT = "parataa.run/1"
AGGREGATE_FORMAT = "parataa.aggregate/1"
RUN_REQUIRED_FILES = ("samples.parquet", "convergence.parquet", "timings.parquet", "trajectory.safetensors")
# the columns of a run's fidelity.parquet (parataa.fidelity.FidelityRecorder's rows)
FIDELITY_COLUMNS = ("sample", "iteration", "psnr_db", "err_max", "err_rms", "image_psnr_db")


class ManifestError(ValueError):
    """A stored run or aggregate is missing, truncated, or does not match its manifest: for every reader it
    does not exist. `path` is the directory, `reason` what is wrong."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


# ------------------------------------------------------------------------------------------ primitives


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write `data` to `path` through a temporary file in the same directory, fsync, `os.replace`.
    Returns the sha256 of the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: leave no partial temporary behind
        tmp.unlink(missing_ok=True)
        raise
    return sha256_bytes(data)


_TEMPORARY = re.compile(r"^\..+\.tmp\d+$")


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporary files atomic_write_bytes leaves when its process is killed mid-write (kill -9).
    Call it only where no other process is writing: before a job (re)writes its own directories."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        if _TEMPORARY.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy scalars and arrays, without importing numpy
        return o.tolist()
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj: Any) -> Any:
    """`obj` as it reads back from JSON (numpy numbers -> Python numbers, tuples -> lists, paths -> str)."""
    return json.loads(json.dumps(obj, default=_json_default))


def atomic_write_json(path: str | Path, obj: Any) -> str:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


# --------------------------------------------------------------------------------------- the self-hash


def canonical_json(obj: Any) -> bytes:
    """The bytes a manifest's own hash is taken over: sorted keys, no whitespace, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default).encode()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of every field except `manifest_sha256`."""
    return sha256_bytes(canonical_json({k: v for k, v in manifest.items() if k != DIGEST_KEY}))


def seal(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-normalised copy of `manifest` with `manifest_sha256` set (write this one)."""
    out = to_json({k: v for k, v in manifest.items() if k != DIGEST_KEY})
    out[DIGEST_KEY] = manifest_digest(out)
    return out


# ------------------------------------------------------------------------------------------- verifying


def verify(
    directory: str | Path,
    fmt: str = RUN_FORMAT,
    required: Iterable[str] = RUN_REQUIRED_FILES,
    *,
    check_files: bool = True,
    error: type[ManifestError] = ManifestError,
) -> dict[str, Any]:
    """The manifest of `directory` after every check (module docstring); raises `error(directory, reason)`.

    check_files=False skips hashing the data files (their listing is still checked); the manifest's own hash is
    always checked."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise error(directory, f"no {MANIFEST} (the run is missing or was interrupted; rerun it)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = f"unreadable manifest: {MANIFEST} is not valid JSON ({e}); delete the directory and rerun"
        raise error(directory, reason) from e
    if not isinstance(manifest, dict):
        raise error(directory, f"{MANIFEST} must hold a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != fmt:
        raise error(directory, f"manifest format must be {fmt!r}, got {manifest.get('format')!r}")
    recorded = manifest.get(DIGEST_KEY)
    if not isinstance(recorded, str):
        raise error(
            directory,
            f"{MANIFEST} has no {DIGEST_KEY} (written before manifests covered themselves, or edited); rerun it",
        )
    actual = manifest_digest(manifest)
    if actual != recorded:
        raise error(
            directory,
            f"{MANIFEST} does not match its own {DIGEST_KEY} (recorded {recorded[:12]}…, computed {actual[:12]}…): "
            "a field was changed after the run was written; delete the directory and rerun",
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise error(directory, f"{MANIFEST} lists no files ('files' must map file names to sha256, got {files!r})")
    absent = [f for f in required if f not in files]
    if absent:
        raise error(directory, f"{MANIFEST}: required files not listed: {absent}")
    for name, digest in files.items():
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise error(directory, f"{MANIFEST} lists a file outside the directory: {name!r}")
        f = directory / name
        if not f.is_file():
            raise error(directory, f"{name} is listed in {MANIFEST} but missing")
        if check_files:
            got = sha256_file(f)
            if got != digest:
                raise error(
                    directory,
                    f"sha256 mismatch for {name} (manifest {str(digest)[:12]}…, file {got[:12]}…, "
                    f"{f.stat().st_size} bytes): corrupt or truncated; delete the directory and rerun",
                )
    return manifest
