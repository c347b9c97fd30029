"""Stored results: the only writer (and a verifying reader) of the layout in docs/STORAGE.md.

A run directory holds data files and a `manifest.json` that lists the sha256 of every one of them and covers
its own fields with `manifest_sha256` (`parataa.manifest`). Data files are written first, each atomically
(temporary file + `os.replace`); the manifest is written last, atomically. A directory without a valid
manifest, or whose files or manifest fields do not match the hashes, does not exist for any reader:
`read_manifest` / `load_run` raise `CorruptRunError` naming the file and the problem (the same check as the
analysis' `analysis.loaders.verify_run`).

This module does not import torch: arrays go through numpy and safetensors' numpy API, tables through
pandas/pyarrow, so the analysis can use the same loaders.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import (
    AGGREGATE_FORMAT,
    FIDELITY_COLUMNS,
    MANIFEST,
    RUN_FORMAT,
    RUN_REQUIRED_FILES,
    ManifestError,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temporaries,
    seal,
    sha256_file,
    to_json,
    verify,
)

__all__ = [
    "RUN_FORMAT",
    "AGGREGATE_FORMAT",
    "DATA_FILES",
    "CorruptRunError",
    "Run",
    "run_dir",
    "sha256_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "remove_stale_temporaries",
    "git_sha",
    "environment",
    "write_run",
    "read_manifest",
    "is_complete",
    "load_run",
    "write_aggregate",
    "read_aggregate",
]

DATA_FILES = RUN_REQUIRED_FILES
OPTIONAL_FILES = ("iterates.safetensors", "fidelity.parquet")
TABLES = ("samples", "convergence", "timings")


class CorruptRunError(ManifestError):
    """A stored run or aggregate is missing, truncated, or does not match its manifest (`parataa.manifest`)."""


# ----------------------------------------------------------------------------------------------- paths


def run_dir(root: str | Path, study: str, model: str, sampler: str, steps: int, solver_tag: str, shard: int) -> Path:
    """results/<study>/runs/<model>/<sampler>-<steps>/<solver_tag>/shard-<k>"""
    return Path(root) / study / "runs" / model / f"{sampler}-{int(steps)}" / solver_tag / f"shard-{int(shard)}"


# ------------------------------------------------------------------------------------------ primitives


def _parquet_bytes(df: Any) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


# -------------------------------------------------------------------------------------- provenance


def git_sha() -> str:
    """Commit of the source tree the job runs from (`PARATAA_GIT_SHA` wins, e.g. for installed copies);
    suffixed with `-dirty` when tracked files differ from it; "unknown" outside a git checkout."""
    if os.environ.get("PARATAA_GIT_SHA"):
        return os.environ["PARATAA_GIT_SHA"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def environment() -> dict[str, str]:
    """Versions of the interpreter and of every package that can change a number (no imports needed)."""
    from importlib import metadata

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "parataa",
        "torch",
        "numpy",
        "pandas",
        "pyarrow",
        "safetensors",
        "diffusers",
        "transformers",
        "submitit",
        "snakemake",
    ):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


# ------------------------------------------------------------------------------------------- run tables


def schedule_record(schedule: Any) -> dict[str, Any]:
    """The manifest's `schedule` entry: per-step levels that let the analysis recount steps under thresholds
    scaled by sigma_t or sqrt(beta_t)."""
    return {
        **schedule.describe(),
        "alpha_in": schedule.alpha_in.tolist(),
        "alpha_out": schedule.alpha_out.tolist(),
        "sigma": schedule.sigma.tolist(),
    }




def run_tables(
    result: Any,
    *,
    study: str,
    model: str,
    sampler: str,
    steps: int,
    solver: str,
    solver_tag: str,
    cfg_scale: float,
    conditions: Sequence[Any],
    wall_s: float,
    world_size: int,
    device: str,
    ref_x0: np.ndarray | None,
    psnr: np.ndarray | None = None,
    fidelity: Mapping[str, Any] | None = None,
) -> tuple[Any, Any, Any, Any]:
    """(samples, convergence, timings, fidelity) DataFrames of one solve, in the columns docs/STORAGE.md fixes.

    `ref_x0` is the sequential sample of the same seeds (None for the sequential run itself): err_max / err_rms
    are the distances to it. Times of a batch are divided evenly among its samples. `fidelity` is the per-iteration
    table of a `parataa.fidelity.FidelityRecorder` (its `rows`: columns sample, iteration, psnr_db, err_max, err_rms,
    image_psnr_db); the fourth table is None without it.
    """
    import pandas as pd

    cfg = result.config
    n = len(result.seeds)
    x0 = result.x0.detach().cpu().double().numpy()
    if ref_x0 is not None:
        diff = (x0 - ref_x0).reshape(n, -1)
        err_max, err_rms = np.abs(diff).max(axis=1), np.sqrt((diff**2).mean(axis=1))
    else:
        err_max = err_rms = np.full(n, np.nan)
    t = result.timings
    model_s, solver_s, comm_s = (float(t[c].sum()) if len(t) else 0.0 for c in ("model_s", "solver_s", "comm_s"))
    ident = {"model": model, "sampler": sampler, "steps": int(steps), "solver": solver, "solver_tag": solver_tag}
    seeds = np.asarray(result.seeds, dtype=np.int64)
    labels = [str(c) for c in conditions]
    samples = pd.DataFrame(
        {
            "study": study,
            **ident,
            "method": cfg.method,
            "order": cfg.order or steps,
            "history": cfg.history,
            "window": cfg.window or steps,
            "ridge": cfg.ridge,
            "abs_tol": cfg.abs_tol,
            "rel_tol": cfg.rel_tol,
            "tol_scale": cfg.tol_scale,
            "init": cfg.init,
            "picard_tol": cfg.picard_tol,
            "cfg_scale": float(cfg_scale),
            "seed": seeds,
            "condition": labels,
            "iterations": result.iterations.numpy().astype(np.int64),
            "nfe": result.nfe.numpy().astype(np.int64),
            "finished": result.finished.numpy().astype(bool),
            "wall_s": wall_s / n,
            "model_s": model_s / n,
            "solver_s": solver_s / n,
            "comm_s": comm_s / n,
            "world_size": int(world_size),
            "device": device,
            "err_max": err_max,
            "err_rms": err_rms,
            "psnr": np.full(n, np.nan) if psnr is None else psnr,
        }
    )
    convergence, timings = result.log, result.timings
    for key, val in ident.items():
        convergence[key] = val
        timings[key] = val
    fid = None
    if fidelity is not None:
        missing = [c for c in FIDELITY_COLUMNS if c not in fidelity]
        if missing:
            raise ValueError(f"fidelity rows lack columns {missing}; a FidelityRecorder's rows have {FIDELITY_COLUMNS}")
        sample = np.asarray(fidelity["sample"], dtype=np.int64)
        if len(sample) and not (0 <= sample.min() and sample.max() < n):
            raise ValueError(f"fidelity rows name samples {sorted(set(sample.tolist()))}, the run has {n}")
        fid = pd.DataFrame(
            {
                "study": study,
                **ident,
                "sample": sample,
                "seed": seeds[sample],
                "condition": [labels[i] for i in sample],
                "iteration": np.asarray(fidelity["iteration"], dtype=np.int64),
                **{c: np.asarray(fidelity[c], dtype=np.float64) for c in FIDELITY_COLUMNS[2:]},
            }
        )
    return samples, convergence, timings, fid


# ------------------------------------------------------------------------------------------- writing


def write_run(
    directory: str | Path,
    *,
    samples: Any,
    convergence: Any,
    timings: Any,
    trajectory: np.ndarray,
    x0: np.ndarray,
    seeds: Sequence[int],
    config: Mapping[str, Any],
    noise_sha256: str,
    devices: Sequence[str],
    world_size: int,
    iterates: np.ndarray | None = None,
    fidelity: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one run (docs/STORAGE.md): data files first, `manifest.json` last. Returns the manifest.

    trajectory [N, T+1, *S] is stored as float32, x0 [N, *S] as float64 (the exact solver output, so distances
    to the sequential sample are not limited by float32 rounding); iterates, when given, [K, I, *S] float32;
    fidelity, when given, the per-iteration distance table (`run_tables`' fourth table) as fidelity.parquet.
    The manifest lists every file's sha256 and covers itself with `manifest_sha256` (`parataa.manifest`).
    """
    from safetensors.numpy import save as st_save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    manifest_path = directory / MANIFEST
    # An old manifest must not vouch for the new files while they are being written.
    if manifest_path.exists():
        manifest_path.unlink()
    n = len(seeds)
    tables = {"samples": samples, "convergence": convergence, "timings": timings}
    if fidelity is not None:
        tables["fidelity"] = fidelity
    for name, df in tables.items():
        if not hasattr(df, "to_parquet"):
            raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    if len(samples) != n:
        raise ValueError(f"samples must have one row per seed ({n}), got {len(samples)}")
    if trajectory.shape[0] != n or x0.shape[0] != n:
        raise ValueError(f"trajectory and x0 must have {n} rows, got {trajectory.shape} and {x0.shape}")
    cfg_json = json.dumps(to_json(config), sort_keys=True)
    meta = {"format": RUN_FORMAT, "config": cfg_json, "seeds": json.dumps([int(s) for s in seeds])}
    files: dict[str, str] = {}
    for name, df in tables.items():
        files[f"{name}.parquet"] = atomic_write_bytes(directory / f"{name}.parquet", _parquet_bytes(df))
    tensors = {
        "trajectory": np.ascontiguousarray(trajectory, dtype=np.float32),
        "x0": np.ascontiguousarray(x0, dtype=np.float64),
    }
    files["trajectory.safetensors"] = atomic_write_bytes(
        directory / "trajectory.safetensors", st_save(tensors, metadata=meta)
    )
    if iterates is not None:
        files["iterates.safetensors"] = atomic_write_bytes(
            directory / "iterates.safetensors",
            st_save({"iterates": np.ascontiguousarray(iterates, dtype=np.float32)}, metadata=meta),
        )
    for name in OPTIONAL_FILES:  # a rerun without an optional file must not leave the old one beside it
        if name not in files and (directory / name).exists():
            (directory / name).unlink()
    manifest = {
        "format": RUN_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": json.loads(cfg_json),
        "git_sha": git_sha(),
        "environment": environment(),
        "devices": list(devices),
        "world_size": int(world_size),
        "noise_sha256": noise_sha256,
        "files": files,
    }
    if extra:
        manifest.update(to_json(dict(extra)))
    manifest = seal(manifest)
    atomic_write_json(manifest_path, manifest)
    return manifest


# ------------------------------------------------------------------------------------------- reading


def read_manifest(directory: str | Path, verify_files: bool = True, fmt: str = RUN_FORMAT) -> dict[str, Any]:
    """The manifest of a run (or aggregate) directory after `parataa.manifest.verify`: its own hash, the required
    files listed, and (verify_files) every listed file's sha256. Raises CorruptRunError naming the problem."""
    required = RUN_REQUIRED_FILES if fmt == RUN_FORMAT else tuple(f"{t}.parquet" for t in TABLES)
    return verify(directory, fmt, required, check_files=verify_files, error=CorruptRunError)


def is_complete(directory: str | Path, config: Mapping[str, Any] | None = None) -> bool:
    """True when the run has a valid manifest (every hash checked) and, if given, was made from `config`."""
    try:
        m = read_manifest(directory)
    except CorruptRunError:
        return False
    if config is None:
        return True
    return m.get("config") == to_json(config)


@dataclass
class Run:
    directory: Path
    manifest: dict[str, Any]
    samples: Any
    convergence: Any
    timings: Any
    trajectory: np.ndarray
    x0: np.ndarray
    seeds: tuple[int, ...]
    iterates: np.ndarray | None = None
    fidelity: Any = None


def load_run(directory: str | Path, tables: bool = True) -> Run:
    """Read a run after verifying every file against its manifest; raises CorruptRunError otherwise."""
    import pandas as pd
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    directory = Path(directory)
    manifest = read_manifest(directory)
    raw = (directory / "trajectory.safetensors").read_bytes()
    try:
        arrays = st_load(raw)
    except (SafetensorError, ValueError) as e:
        raise CorruptRunError(directory, f"trajectory.safetensors unreadable ({e})") from e
    seeds = tuple(int(s) for s in json.loads(_safetensors_metadata(raw).get("seeds", "[]")))
    iterates = None
    if "iterates.safetensors" in manifest["files"]:
        iterates = st_load((directory / "iterates.safetensors").read_bytes())["iterates"]
    frames = {}
    if tables:
        for t in TABLES:
            frames[t] = pd.read_parquet(directory / f"{t}.parquet")
        if "fidelity.parquet" in manifest["files"]:
            frames["fidelity"] = pd.read_parquet(directory / "fidelity.parquet")
    return Run(
        directory=directory,
        manifest=manifest,
        samples=frames.get("samples"),
        convergence=frames.get("convergence"),
        timings=frames.get("timings"),
        trajectory=arrays["trajectory"],
        x0=arrays["x0"],
        seeds=seeds,
        iterates=iterates,
        fidelity=frames.get("fidelity"),
    )


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return header.get("__metadata__", {}) or {}


# ---------------------------------------------------------------------------------------- aggregates


def write_aggregate(out_dir: str | Path, run_dirs: Iterable[str | Path], root: str | Path | None = None) -> dict:
    """Concatenate the tables of verified runs into out_dir/{samples,convergence,timings}.parquet plus a
    manifest listing every run manifest (path relative to `root`, sha256) they came from."""
    import pandas as pd

    out_dir = Path(out_dir)
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("write_aggregate needs at least one run directory, got none")
    parts: dict[str, list[Any]] = {t: [] for t in TABLES}
    sources = []
    for d in run_dirs:
        run = load_run(d)
        for t in TABLES:
            parts[t].append(getattr(run, t))
        rel = os.path.relpath(d / "manifest.json", root) if root is not None else str(d / "manifest.json")
        sources.append({"path": rel, "sha256": sha256_file(d / "manifest.json")})
    if (out_dir / MANIFEST).exists():
        (out_dir / MANIFEST).unlink()
    remove_stale_temporaries(out_dir)
    files = {}
    for t in TABLES:
        frames = [f for f in parts[t] if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else parts[t][0].iloc[0:0]
        files[f"{t}.parquet"] = atomic_write_bytes(out_dir / f"{t}.parquet", _parquet_bytes(df))
    manifest = {
        "format": AGGREGATE_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_sha": git_sha(),
        "runs": sources,
        "files": files,
    }
    manifest = seal(manifest)
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


def read_aggregate(out_dir: str | Path) -> dict[str, Any]:
    """The aggregate tables after verifying their hashes: {"manifest", "samples", "convergence", "timings"}."""
    import pandas as pd

    m = read_manifest(out_dir, fmt=AGGREGATE_FORMAT)
    return {"manifest": m, **{t: pd.read_parquet(Path(out_dir) / f"{t}.parquet") for t in TABLES}}
