"""The job spec: what one cluster job computes, typed, with the cell config its runs are stored under.

`parataa.jobs.plan` makes a `JobSpec` per (model, sampler, steps, seed shard) baseline and per job group;
`ShardJob` runs it. A spec crosses process boundaries as a plain dict (`to_dict` / `from_dict`): Snakemake keeps
it as a rule parameter (and reruns a rule whose spec changed), submitit pickles it into the job. `from_dict`
refuses unknown and missing keys, naming them. Torch-free (the workflow builds specs without importing torch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..solver_config import SolverConfig

__all__ = ["DEFAULT_CHUNK_SIZE", "RESULT_NEUTRAL", "ModelConfig", "RunSpec", "JobSpec"]

# Rows per network call when a study config leaves a model's `chunk_size` null.
DEFAULT_CHUNK_SIZE = 8
# Job settings that change no stored number: how the job reports and when it checkpoints. A job whose spec
# differs only in these is not planned again.
RESULT_NEUTRAL = ("progress", "threads", "checkpoint_every_s")


def _fields(cls: type, d: Mapping[str, Any], what: str) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if not isinstance(d, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - set(names))
    missing = [k for k in required if k not in d]
    if unknown or missing:
        raise ValueError(f"{what}: unknown keys {unknown}, missing keys {missing} (keys: {names})")
    return dict(d)


@dataclass(frozen=True)
class ModelConfig:
    """One `models[]` entry of the study config: the model by registry name and how to evaluate it."""

    name: str
    cfg_scale: float
    options: Mapping[str, Any] = field(default_factory=dict)
    path: str | None = None
    dtype: str | None = None
    chunk_size: int | None = None  # rows per network call (None: DEFAULT_CHUNK_SIZE)
    # sha256 identity of the weights the plan found (parataa.jobs.identity.weights_digest; None: gmm, or weights
    # not on the planning machine). Part of every run's config: a run made with other weights is made again.
    weights: str | None = None

    @property
    def rows_per_call(self) -> int:
        """Rows of every network call of a job, at every world size (parataa.distributed.DistributedDenoiser)."""
        return int(self.chunk_size or DEFAULT_CHUNK_SIZE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cfg_scale": float(self.cfg_scale),
            "options": dict(self.options),
            "path": self.path,
            "dtype": self.dtype,
            "chunk_size": self.chunk_size,
            "weights": self.weights,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        d = _fields(cls, d, "job spec model")
        return cls(**{**d, "cfg_scale": float(d["cfg_scale"]), "options": dict(d.get("options") or {})})


@dataclass(frozen=True)
class RunSpec:
    """One run of a job: a solver configuration and the directory its results go to."""

    solver: str  # the study's solver name: sequential, fp, fp+, aa, taa, picard
    tag: str  # parataa.solver_config.solver_tag: the run directory's name
    config: SolverConfig
    dir: str

    def to_dict(self) -> dict[str, Any]:
        return {"solver": self.solver, "tag": self.tag, "config": self.config.to_dict(), "dir": self.dir}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        d = _fields(cls, d, "job spec run")
        cfg = d["config"]
        return cls(
            str(d["solver"]),
            str(d["tag"]),
            cfg if isinstance(cfg, SolverConfig) else SolverConfig.from_dict(cfg),
            str(d["dir"]),
        )


@dataclass(frozen=True)
class JobSpec:
    """Everything one job needs: the shard (model, sampler, steps, seeds and their conditions), where it runs
    (device, world size, threads), what it keeps (checkpoints, iterates, fidelity decoding) and its runs.
    Parallel runs (a spec with a `baseline`) also store fidelity.parquet: every iteration's x0 against the
    baseline's (parataa.fidelity)."""

    name: str  # <study>/<model>/<sampler>-<steps>/shard-<k>/(sequential|group-<g>), for status lines
    study: str
    results_dir: str
    model: ModelConfig
    sampler: str
    steps: int
    shard: int
    seeds: tuple[int, ...]
    conditions: tuple[Any, ...]  # one per seed
    device: str
    world_size: int
    threads: int
    checkpoint_every_s: float
    save_iterates: int  # samples whose x0 of every iteration is stored
    fidelity_decode: bool  # decode every iteration's x0 for fidelity.parquet's image_psnr_db
    progress: bool
    deterministic: bool
    state_dir: str  # solver-state checkpoints
    noise: str  # the shard's noise bundle
    baseline: str | None  # the sequential run directory the parallel runs compare with (None: this is it)
    runs: tuple[RunSpec, ...]
    ranks_per_gpu: int = 1  # the most processes on one GPU (>= 2: shared GPUs over gloo; parataa.distributed)

    # ------------------------------------------------------------------------------------- conversion

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (Snakemake rule parameter, submitit pickle); `from_dict` inverts it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["model"] = self.model.to_dict()
        out["seeds"] = [int(s) for s in self.seeds]
        out["conditions"] = list(self.conditions)
        out["runs"] = [r.to_dict() for r in self.runs]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSpec:
        d = _fields(cls, d, "job spec")
        return cls(
            **{
                **d,
                "model": d["model"] if isinstance(d["model"], ModelConfig) else ModelConfig.from_dict(d["model"]),
                "steps": int(d["steps"]),
                "shard": int(d["shard"]),
                "seeds": tuple(int(s) for s in d["seeds"]),
                "conditions": tuple(d["conditions"]),
                "world_size": int(d["world_size"]),
                "ranks_per_gpu": int(d.get("ranks_per_gpu", 1)),
                "threads": int(d["threads"]),
                "checkpoint_every_s": float(d["checkpoint_every_s"]),
                "save_iterates": int(d["save_iterates"]),
                "fidelity_decode": bool(d["fidelity_decode"]),
                "progress": bool(d["progress"]),
                "deterministic": bool(d["deterministic"]),
                "runs": tuple(r if isinstance(r, RunSpec) else RunSpec.from_dict(r) for r in d["runs"]),
            }
        )

    @classmethod
    def coerce(cls, spec: JobSpec | Mapping[str, Any]) -> JobSpec:
        return spec if isinstance(spec, JobSpec) else cls.from_dict(spec)

    def replace(self, **changes: Any) -> JobSpec:
        return dataclasses.replace(self, **changes)

    def absolute(self, cwd: str | Path | None = None) -> JobSpec:
        """The spec with every path made absolute (a cluster job may start in another directory)."""
        base = Path(cwd or Path.cwd())

        def ab(p: str | None) -> str | None:
            return None if p is None else p if Path(p).is_absolute() else str((base / p).resolve())

        return self.replace(
            results_dir=ab(self.results_dir),
            state_dir=ab(self.state_dir),
            noise=ab(self.noise),
            baseline=ab(self.baseline),
            runs=tuple(dataclasses.replace(r, dir=ab(r.dir)) for r in self.runs),
        )

    def portable(self) -> dict[str, Any]:
        """What a job record stores and the next plan compares: `to_dict()` with every path relative to the
        study's results directory (<results_dir>/<study>), `results_dir` itself left out, and the settings that
        change no stored result (RESULT_NEUTRAL) left out. Equal for the same job in a copied or moved results
        directory; different when any option that decides a result changed."""
        base = os.path.abspath(os.path.join(self.results_dir, self.study))

        def rel(p: str | None) -> str | None:
            return None if p is None else Path(os.path.relpath(os.path.abspath(p), base)).as_posix()

        out = self.to_dict()
        for k in ("results_dir", *RESULT_NEUTRAL):
            out.pop(k)
        for k in ("state_dir", "noise", "baseline"):
            out[k] = rel(out[k])
        for r in out["runs"]:
            r["dir"] = rel(r["dir"])
        return json.loads(json.dumps(out, sort_keys=True))

    # ------------------------------------------------------------------------------- what a run is

    def run_config(self, run: RunSpec) -> dict[str, Any]:
        """The full cell config stored in the run's manifest (and compared to decide whether a run is done)."""
        m = self.model
        return {
            "study": self.study,
            "model": m.name,
            "model_options": dict(m.options),
            "model_path": m.path,
            "weights_sha256": m.weights,
            "dtype": m.dtype,
            "chunk_size": m.rows_per_call,  # the size in use: it decides the float32 rounding of every call
            "cfg_scale": float(m.cfg_scale),
            "sampler": self.sampler,
            "steps": int(self.steps),
            "shard": int(self.shard),
            "seeds": [int(s) for s in self.seeds],
            "conditions": list(self.conditions),
            "solver": run.solver,
            "solver_tag": run.tag,
            "solver_config": run.config.to_dict(),
            "device": self.device,
            "world_size": int(self.world_size),
            "save_iterates": int(self.save_iterates),
            "fidelity_decode": bool(self.fidelity_decode),
            "deterministic": bool(self.deterministic),
        }

    def run_key(self, run: RunSpec) -> str:
        """sha256 of the run's config: a checkpoint is resumed only by a run with the same key."""
        return hashlib.sha256(json.dumps(self.run_config(run), sort_keys=True).encode()).hexdigest()

    def state_path(self, run: RunSpec) -> Path:
        """Where the run's solver-state checkpoint goes."""
        return (
            Path(self.state_dir)
            / self.model.name
            / f"{self.sampler}-{self.steps}"
            / run.tag
            / f"shard-{self.shard}"
            / "state.pt"
        )
