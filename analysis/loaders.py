"""Read what the workflow stored (docs/STORAGE.md), verifying every byte before use.

A run directory `runs/<model>/<sampler>-<steps>/<solver_tag>/shard-<k>/` exists for the analysis only when
it passes `parataa.manifest.verify`, the same check the writer's own reader applies: manifest.json parses,
has format "parataa.run/1", matches its own `manifest_sha256` (so no field, the schedule included, was
changed), lists the required files, and every listed file has the sha256 the manifest records. Anything else
(no manifest, a truncated or modified file or manifest field, a listed file that is gone) is a rejected run:
it is reported with the reason and never read. Files present but not listed in the manifest are ignored.

The expected study matrix (model x sampler x steps x solver_tag x seeds) comes from the study config;
`load_study(..., strict=True)` refuses an incomplete matrix and names every missing cell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from parataa.manifest import FIDELITY_COLUMNS as STORED_FIDELITY_COLUMNS
from parataa.manifest import RUN_FORMAT, ManifestError, verify
from parataa.manifest import RUN_REQUIRED_FILES as REQUIRED_FILES
from parataa.solver_config import SolverConfig, expand_solver_grid

__all__ = [
    "RUN_FORMAT",
    "REQUIRED_FILES",
    "ResultError",
    "IncompleteStudyError",
    "Run",
    "Study",
    "verify_run",
    "discover_runs",
    "load_study",
    "expected_cells",
    "missing_cells",
    "read_study_config",
    "FIDELITY_FILE",
    "fidelity_from_iterates",
    "psnr_db",
    "run_seeds",
]

FIDELITY_FILE = "fidelity.parquet"
FIDELITY_COLUMNS = STORED_FIDELITY_COLUMNS[2:]  # the metrics of a stored fidelity.parquet (after sample, iteration)
DATA_RANGE = 2.0  # states in [-1, 1]
CELL = ["model", "sampler", "steps", "solver_tag"]


class ResultError(ManifestError):
    """A stored run failed verification: for the analysis it does not exist."""


class IncompleteStudyError(ValueError):
    """Strict mode: the study matrix has missing cells (all of them are named)."""

    def __init__(self, missing: list[str], rejected: list[ResultError]) -> None:
        self.missing, self.rejected = missing, rejected
        lines = [f"the study matrix is incomplete: {len(missing)} missing cell(s)"]
        lines += [f"  missing: {m}" for m in missing]
        lines += [f"  rejected run: {r}" for r in rejected]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Run:
    """One verified shard. Only files listed (and verified) in its manifest can be read."""

    path: Path
    manifest: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    @property
    def files(self) -> dict[str, str]:
        return self.manifest["files"]

    @property
    def world_size(self) -> int:
        return int(self.manifest.get("world_size", 1))

    def has(self, name: str) -> bool:
        return name in self.files

    def _listed(self, name: str) -> Path:
        if name not in self.files:
            raise KeyError(f"{self.path}: {name} is not listed in manifest.json")
        return self.path / name

    def read_parquet(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self._listed(name))

    def read_safetensors(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Tensors as numpy arrays (the `safetensors.numpy` API: no torch) and the header metadata."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        p = self._listed(name)
        with safe_open(str(p), framework="np") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(p)), meta


def verify_run(path: str | Path) -> Run:
    """Check manifest and hashes of one run directory (`parataa.manifest.verify`); raise ResultError naming
    what is wrong."""
    path = Path(path)
    return Run(path, verify(path, RUN_FORMAT, REQUIRED_FILES, error=ResultError))


def discover_runs(results: str | Path) -> tuple[list[Run], list[ResultError]]:
    """Every shard directory under results/runs, split into verified runs and rejected ones."""
    results = Path(results)
    runs_dir = results / "runs"
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{results} has no runs/ directory: not a results/<study> folder of docs/STORAGE.md")
    runs: list[Run] = []
    rejected: list[ResultError] = []
    for shard in sorted(p for p in runs_dir.glob("*/*/*/shard-*") if p.is_dir()):
        try:
            run = verify_run(shard)
            _check_location(run, runs_dir)
            runs.append(run)
        except ResultError as e:
            rejected.append(e)
    return runs, rejected


def _cell_of_path(shard: Path, runs_dir: Path) -> dict[str, Any] | None:
    rel = shard.relative_to(runs_dir).parts  # model, sampler-steps, tag, shard-k
    m = re.fullmatch(r"(.+)-(\d+)", rel[1])
    if not m:
        return None
    return {"model": rel[0], "sampler": m.group(1), "steps": int(m.group(2)), "solver_tag": rel[2]}


def _check_location(run: Run, runs_dir: Path) -> None:
    """The samples of a shard must belong to the cell its directory names."""
    cell = _cell_of_path(run.path, runs_dir)
    if cell is None:
        raise ResultError(run.path, "directory is not <model>/<sampler>-<steps>/<solver_tag>/shard-<k>")
    s = run.read_parquet("samples.parquet")
    if s.empty:
        raise ResultError(run.path, "samples.parquet has no rows")
    for key, val in cell.items():
        if key not in s.columns:
            raise ResultError(run.path, f"samples.parquet lacks column {key!r}")
        if not (s[key].astype(type(val)) == val).all():
            raise ResultError(run.path, f"samples.parquet {key} {sorted(set(s[key]))} != directory's {val!r}")


# ------------------------------------------------------------------------------------------- study matrix


def read_study_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    p = Path(config)
    if not p.is_file():
        raise FileNotFoundError(f"study config {p} does not exist")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"study config {p} must be a YAML mapping, got {type(data).__name__}")
    return data


def _seeds(v: Any) -> list[int]:
    if isinstance(v, bool):
        raise ValueError(f"seeds must be a list, a count, 'a-b' or {{start, count}}, got {v!r}")
    if isinstance(v, int):
        return list(range(v))
    if isinstance(v, str):
        out: list[int] = []
        for part in v.split(","):
            part = part.strip()
            if re.fullmatch(r"\d+-\d+", part):
                lo, hi = (int(x) for x in part.split("-"))
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
        return out
    if isinstance(v, Mapping):
        return list(range(int(v.get("start", 0)), int(v.get("start", 0)) + int(v["count"])))
    return [int(s) for s in v]


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _tags_for(tags: Any, model: str, sampler: str, steps: int) -> list[str]:
    if isinstance(tags, Mapping):
        for key in (f"{model}/{sampler}-{steps}", f"{sampler}-{steps}", sampler, model, "*"):
            if key in tags:
                return _tag_names(tags[key])
        return []
    return _tag_names(tags)


def _tag_names(v: Any) -> list[str]:
    out = []
    for t in _as_list(v):
        out.append(str(t["tag"]) if isinstance(t, Mapping) else str(t))
    return out


def workflow_solver_tags(
    config: Mapping[str, Any], steps: int, model: str | None = None, sampler: str | None = None
) -> list[str]:
    """Tags of every parallel cell of a workflow study config at `steps` (grids expanded), in config order; with
    `model` and `sampler`, that cell's, including the config's `grids` that name it."""
    return [r["tag"] for r in expand_solver_grid(config, steps, model, sampler)]


def expected_cells(config: str | Path | Mapping[str, Any]) -> pd.DataFrame:
    """The expected matrix, one row per (model, sampler, steps, solver_tag, seed).

    `config` (a dict or a YAML path) is either the workflow's study config (config/*.yaml: `models` as
    mappings with `name`, `solvers: {name: {option: grid}}`; the sequential baseline is always expected), or
    an explicit matrix (a top-level `matrix:` mapping is used when present)::

        models: [gmm]            samplers: [ddim, ddpm]        steps: [16, 100]
        seeds: [0, 1] | 10 | "0-9" | {start: 0, count: 10}
        solver_tags: [sequential, taa_m2_k100_w100_tol1e-3]      # all cells, or per cell group:
        solver_tags: {ddim: [...], "ddpm-100": [...], "gmm/ddim-16": [...], "*": [...]}
    """
    cfg = read_study_config(config)
    cfg = dict(cfg.get("matrix", cfg))
    for key in ("models", "samplers", "steps", "seeds"):
        if key not in cfg:
            raise ValueError(f"study config needs {key!r} (have {sorted(cfg)})")
    workflow = isinstance(cfg.get("solvers"), Mapping) and "solver_tags" not in cfg
    tags = cfg.get("solver_tags", cfg.get("solvers"))
    if tags is None:
        raise ValueError(f"study config needs 'solvers' (workflow) or 'solver_tags'; have {sorted(cfg)}")
    seeds = _seeds(cfg["seeds"])
    rows = []
    for model in _as_list(cfg["models"]):
        model = str(model["name"]) if isinstance(model, Mapping) else str(model)
        for sampler in _as_list(cfg["samplers"]):
            for steps in _as_list(cfg["steps"]):
                if workflow:  # a cell without parallel solvers is not planned, its baseline neither
                    parallel = workflow_solver_tags(cfg, int(steps), model, str(sampler))
                    cell_tags = ["sequential", *parallel] if parallel else []
                else:
                    cell_tags = _tags_for(tags, model, str(sampler), int(steps))
                for tag in cell_tags:
                    for seed in seeds:
                        rows.append((model, str(sampler), int(steps), tag, seed))
    return pd.DataFrame(rows, columns=[*CELL, "seed"])


def missing_cells(samples: pd.DataFrame, expected: pd.DataFrame) -> list[str]:
    """Every expected cell without a verified run (or with seeds missing), one readable line each."""
    have = set()
    if not samples.empty:
        have = set(map(tuple, samples[[*CELL, "seed"]].astype({"steps": int, "seed": int}).itertuples(index=False)))
    out = []
    for key, grp in expected.groupby(CELL, sort=True):
        want = [int(s) for s in grp["seed"]]
        lost = [s for s in want if (*key, s) not in have]
        if lost:
            where = "model={} sampler={} steps={} solver_tag={}".format(*key)
            what = "no verified run" if len(lost) == len(want) else f"seeds {lost} missing"
            out.append(f"{where}: {what} (runs/{key[0]}/{key[1]}-{key[2]}/{key[3]}/)")
    return out


# ---------------------------------------------------------------------------------------------- fidelity


def _cell3(run: Run) -> tuple[str, str, int]:
    c = run.config
    return (str(c.get("model")), str(c.get("sampler")), int(c.get("steps", -1)))


def run_seeds(run: Run, meta: Mapping[str, str] | None = None) -> list[int]:
    """Seeds in the order of the run's tensors (safetensors metadata `seeds`, else samples.parquet order)."""
    if meta is None:
        _, meta = run.read_safetensors("trajectory.safetensors")
    if "seeds" in meta:
        return [int(v) for v in json.loads(meta["seeds"])]
    return [int(v) for v in run.read_parquet("samples.parquet")["seed"]]


def psnr_db(mse: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """10 log10(range^2 / MSE); +inf where the MSE is 0."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range**2 / mse)


def fidelity_from_iterates(run: Run, reference: Mapping[tuple, np.ndarray]) -> pd.DataFrame:
    """The rows of fidelity.parquet for the samples whose iterates the run stored (iterates.safetensors:
    [K, I, *S] float32, row k = seed `seeds[k]`), against `reference[(model, sampler, steps, seed)]`. Seeds
    without a reference x0 get no rows."""
    tensors, meta = run.read_safetensors("iterates.safetensors")
    if "iterates" not in tensors:
        raise ResultError(run.path, f"iterates.safetensors has no 'iterates' tensor (has {sorted(tensors)})")
    x = tensors["iterates"]
    seeds = run_seeds(run, meta)[: x.shape[0]]
    s = run.read_parquet("samples.parquet").iloc[0]
    ident = {k: s[k] for k in ("model", "sampler", "steps", "solver", "solver_tag")}
    rows = []
    for j, seed in enumerate(seeds):
        ref = reference.get((str(ident["model"]), str(ident["sampler"]), int(ident["steps"]), int(seed)))
        if ref is None:
            continue
        d = x[j].reshape(x.shape[1], -1).astype(np.float64) - ref.reshape(1, -1)
        mse = (d**2).mean(axis=1)
        rows.append(
            pd.DataFrame(
                {
                    **ident,
                    "seed": int(seed),
                    "sample": j,
                    "iteration": np.arange(1, x.shape[1] + 1),
                    "psnr_db": psnr_db(mse),
                    "err_max": np.abs(d).max(axis=1),
                    "err_rms": np.sqrt(mse),
                    "image_psnr_db": np.nan,
                    "source": "iterates.safetensors",
                }
            )
        )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


# ------------------------------------------------------------------------------------------------- study


@dataclass
class Study:
    root: Path
    runs: list[Run]
    rejected: list[ResultError]
    problems: list[str] = field(default_factory=list)

    def _concat(self, name: str) -> pd.DataFrame:
        parts = []
        for run in self.runs:
            df = run.read_parquet(name)
            check_finite(df, name, run)
            df["run"] = str(run.path.relative_to(self.root))
            if name == "samples.parquet":  # random-weight checkpoints (parataa.models.synthetic) say so
                df["synthetic_weights"] = bool((run.manifest.get("weights") or {}).get("synthetic", False))
            if name == "timings.parquet":
                df["world_size"] = run.world_size
            parts.append(df)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    @cached_property
    def samples(self) -> pd.DataFrame:
        return self._concat("samples.parquet")

    @cached_property
    def convergence(self) -> pd.DataFrame:
        return self._concat("convergence.parquet")

    @cached_property
    def timings(self) -> pd.DataFrame:
        return self._concat("timings.parquet")

    @cached_property
    def step_scales(self) -> pd.DataFrame:
        """Per (run, step): sigma_t and sqrt(beta_t) from that run's own schedule in its manifest, with the run's
        model, sampler and steps (`run` is the run directory relative to the study, as in the tables).

        Needs `schedule: {alpha_in, alpha_out}` (or `sigma`) per step in manifest.json (top level or inside
        config); runs without it have no rows (empty when no run has it).
        """
        rows = []
        for run in self.runs:
            c = run.config
            sched = run.manifest.get("schedule") or c.get("schedule") or {}
            ai, ao = sched.get("alpha_in"), sched.get("alpha_out")
            if ai is not None and ao is not None:
                ai, ao = np.asarray(ai, float), np.asarray(ao, float)
                sigma = np.sqrt((1 - ao) / (1 - ai)) * np.sqrt(1 - ai / ao)
                beta = np.sqrt(1 - ai / ao)
            elif sched.get("sigma") is not None:
                sigma = np.asarray(sched["sigma"], float)
                beta = np.full_like(sigma, np.nan)
            else:
                continue
            key = (str(run.path.relative_to(self.root)), c.get("model"), c.get("sampler"), c.get("steps"))
            for t in range(len(sigma)):
                rows.append((*key, t, float(sigma[t]), float(beta[t])))
        return pd.DataFrame(rows, columns=["run", "model", "sampler", "steps", "step", "sigma", "beta_scale"])

    def runs_with(self, name: str) -> list[Run]:
        return [r for r in self.runs if r.has(name)]

    @cached_property
    def sequential_x0(self) -> dict[tuple, np.ndarray]:
        """(model, sampler, steps, seed) -> x0 of the sequential run (trajectory.safetensors, float64)."""
        out: dict[tuple, np.ndarray] = {}
        for run in self.runs:
            if run.config.get("solver") != "sequential":
                continue
            tensors, meta = run.read_safetensors("trajectory.safetensors")
            x0 = tensors["x0"] if "x0" in tensors else tensors["trajectory"][:, 0]
            key = _cell3(run)
            for i, seed in enumerate(run_seeds(run, meta)):
                out[(*key, seed)] = np.asarray(x0[i], dtype=np.float64)
        return out

    @cached_property
    def fidelity(self) -> pd.DataFrame:
        """Distance of every iteration's x0 to the sequential x0 of the same seed, one row per (run, sample,
        iteration): the identifying columns, seed, sample, iteration (1-based), psnr_db (data range 2),
        err_max, err_rms, image_psnr_db, and `source`.

        From each parallel run's fidelity.parquet (written by the jobs for every sample); for runs stored
        without it, derived from iterates.safetensors (x0 of every iteration, float32, for the run's first
        `save_iterates` samples only) against the sequential x0; runs with neither have no rows.
        Rows past a sample's own stop (a batch runs until its last sample stops) are dropped.
        """
        parts = []
        for run in self.runs:
            if run.config.get("solver") == "sequential":
                continue
            if run.has(FIDELITY_FILE):
                df = run.read_parquet(FIDELITY_FILE).assign(source=FIDELITY_FILE)
            elif run.has("iterates.safetensors"):
                df = fidelity_from_iterates(run, self.sequential_x0)
            else:
                continue
            if df.empty:
                continue
            stop = run.read_parquet("samples.parquet").set_index("seed")["iterations"]
            df = df[df["iteration"].to_numpy() <= stop.reindex(df["seed"]).to_numpy()]
            parts.append(df.assign(run=str(run.path.relative_to(self.root))))
        if not parts:
            return pd.DataFrame(columns=[*CELL, "solver", "seed", "sample", "iteration", *FIDELITY_COLUMNS, "source"])
        return pd.concat(parts, ignore_index=True)

    @cached_property
    def solver_settings(self) -> pd.DataFrame:
        """Per (model, sampler, steps, solver_tag): every SolverConfig field the run's manifest records
        (config.solver_config), fields this checkout's SolverConfig has but an older run lacks filled with
        their defaults. Lets claims and tables select on options samples.parquet has no column for."""
        defaults = SolverConfig().to_dict()
        rows = {}
        for run in self.runs:
            c = run.config
            key = (*_cell3(run), c.get("solver_tag"))
            if key in rows:
                continue
            sc = dict(c.get("solver_config") or {})
            rows[key] = {**{k: v for k, v in defaults.items() if k not in sc}, **sc}
        if not rows:
            return pd.DataFrame(columns=CELL)
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index = pd.MultiIndex.from_tuples(list(rows), names=CELL)
        return df.reset_index()


class NonFiniteMetricError(ValueError):
    """A stored metric that is never NaN is NaN: the run's tables were edited (and its manifest re-sealed)."""


# Columns no writer leaves NaN, per table (err_max / err_rms are NaN in the sequential baseline only: it is the
# reference; psnr is NaN where the error is exactly zero).
FINITE_COLUMNS = {
    "samples.parquet": ("iterations", "wall_s", "model_s", "solver_s", "comm_s"),
    "convergence.parquet": ("rho", "threshold"),
    "timings.parquet": (),
    "fidelity.parquet": ("psnr_db", "err_max", "err_rms"),
}
_PARALLEL_ONLY = {"samples.parquet": ("err_max", "err_rms")}


def check_finite(df: pd.DataFrame, name: str, run: Run) -> None:
    """Refuse (NonFiniteMetricError) a table of `run` with NaN in a column its writer never leaves NaN."""
    cols = list(FINITE_COLUMNS.get(name, ()))
    if run.config.get("solver") != "sequential":
        cols += _PARALLEL_ONLY.get(name, ())
    for col in (c for c in cols if c in df.columns):
        bad = df[col].isna().to_numpy()
        if bad.any():
            raise NonFiniteMetricError(
                f"{run.path / name}: column {col} holds {int(bad.sum())} NaN value(s) (first at row "
                f"{int(bad.argmax())}); the writer never stores one there, so the table was edited after the run "
                "(and its manifest re-sealed). Delete the run directory and rerun the study to recompute it"
            )


class MixedWeightsError(ValueError):
    """Runs of one model were made with different weights: their numbers do not belong to one study."""


def check_weights(runs: Sequence[Run], root: Path) -> None:
    """Refuse (MixedWeightsError) a study in which a model's runs were made with more than one weights identity
    (the sha256 of its weight files, `weights_sha256` in each run's config; parataa.jobs.identity): a baseline
    from one checkpoint and a solver from another would be compared as if they were one model."""
    from parataa.jobs.identity import identity_digests

    ids = identity_digests({str(r.path.relative_to(root)): r.manifest for r in runs})
    lines = []
    for model, by in sorted(ids.items()):
        if len(by) > 1:
            parts = [f"{str(d)[:12]} in {len(rs)} run(s), e.g. {sorted(rs)[0]}" for d, rs in by.items()]
            lines.append(f"model {model}: {len(by)} weights identities: " + "; ".join(parts))
    if lines:
        raise MixedWeightsError(
            f"{root}: the study mixes weights: " + " | ".join(lines) + ". Rerun the workflow (it plans every run "
            "made with other weights than the model's current ones again) or analyse one identity's runs only"
        )


def load_study(
    results: str | Path,
    expected: str | Path | Mapping[str, Any] | None = None,
    strict: bool = False,
) -> Study:
    """Verify and index every run of results/<study>.

    strict: refuse (IncompleteStudyError) when a cell of the expected matrix has no verified run or misses
    seeds, when any run was rejected, or when a seed of a cell is stored twice; every problem is named.
    Without strict, rejected runs and missing cells are listed in `study.problems`.
    """
    root = Path(results)
    runs, rejected = discover_runs(root)
    check_weights(runs, root)
    study = Study(root, runs, rejected)
    problems = [f"rejected run: {r}" for r in rejected]
    study.convergence  # noqa: B018 - read (and checked for NaN, check_finite) before anything is reported
    s = study.samples
    if not s.empty:
        dup = s[s.duplicated([*CELL, "seed"], keep=False)]
        for key, grp in dup.groupby([*CELL, "seed"]):
            where = dict(zip([*CELL, "seed"], key, strict=True))
            problems.append(f"seed stored twice: {where} in {sorted(set(grp['run']))}")
    missing: list[str] = []
    if expected is not None:
        missing = missing_cells(s, expected_cells(expected))
        problems += [f"missing cell: {m}" for m in missing]
    study.problems = problems
    if strict and (missing or rejected or any(p.startswith("seed stored twice") for p in problems)):
        dups = [p for p in problems if p.startswith("seed stored twice")]
        raise IncompleteStudyError(missing + dups, rejected)
    return study
