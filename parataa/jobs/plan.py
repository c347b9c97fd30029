"""The study matrix: from a validated study config to cells, shards, job groups, paths and job specs.

Pure bookkeeping (no models, no files, no torch): used by the workflow (workflow/rules/common.smk) to build the
DAG and by tests. Job specs are `parataa.jobs.spec.JobSpec`s (the workflow passes them on as `to_dict()`).
A cell is (model, sampler, steps, solver_tag); its seeds are split into shards of `seeds_per_shard`;
the parallel cells of one (model, sampler, steps, shard) are packed `runs_per_job` at a time into job groups,
so a cluster job does real work instead of one tiny cell.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..solver_config import PARALLEL_SOLVERS as SOLVER_NAMES
from ..solver_config import SolverConfig, expand_solver_grid, fmt_num, preset, solver_tag
from ..storage import run_dir
from .spec import JobSpec, ModelConfig, RunSpec

__all__ = [
    "SOLVER_NAMES",
    "fmt_num",
    "solver_tag",
    "solver_runs",
    "shards",
    "groups",
    "conditions_for",
    "model_spec",
    "paths",
    "group_spec",
    "baseline_spec",
    "targets",
    "count",
    "Job",
    "Plan",
]


def solver_runs(
    config: Mapping[str, Any], steps: int, model: str | None = None, sampler: str | None = None
) -> list[dict[str, Any]]:
    """Every parallel solver configuration of the study at `steps` (parataa.solver_config.expand_solver_grid);
    with `model` and `sampler`, that cell's, including the study's `grids` that name it."""
    return expand_solver_grid(config, steps, model, sampler)


def shards(config: Mapping[str, Any]) -> list[list[int]]:
    seeds = list(config["seeds"])
    k = int(config["seeds_per_shard"])
    return [seeds[i : i + k] for i in range(0, len(seeds), k)]


def groups(
    config: Mapping[str, Any], steps: int, model: str | None = None, sampler: str | None = None
) -> list[list[dict[str, Any]]]:
    runs = solver_runs(config, steps, model, sampler)
    k = int(config["runs_per_job"])
    return [runs[i : i + k] for i in range(0, len(runs), k)]


def conditions_for(model: Mapping[str, Any], config: Mapping[str, Any], seeds: list[int]) -> list[Any]:
    """The condition of each seed: the model's conditions cycled over the study's seed list, so a seed's
    condition does not depend on how seeds are sharded."""
    conds = list(model["conditions"])
    pos = {s: i for i, s in enumerate(config["seeds"])}
    return [conds[pos[s] % len(conds)] for s in seeds]


def model_spec(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    for m in config["models"]:
        if m["name"] == name:
            return dict(m)
    raise KeyError(f"model {name!r} is not in the study config (models: {[m['name'] for m in config['models']]})")


def paths(config: Mapping[str, Any]) -> dict[str, str]:
    """Snakemake path patterns (wildcards: model, sampler, steps, shard, group)."""
    base = f"{config['results_dir']}/{config['study']}"
    reports = f"{config.get('reports_dir', 'reports')}/{config['study']}"
    return {
        "study_config": base + "/config.yaml",
        "reports": reports,
        "tables": reports + "/tables",
        "audit_md": reports + "/audit.md",
        "audit_html": reports + "/audit.html",
        "figures": f"{config.get('figures_dir', 'figures')}/{config['study']}",
        "noise": base + "/noise/{model}/T{steps}/shard-{shard}.safetensors",
        "baseline": base + "/runs/{model}/{sampler}-{steps}/sequential/shard-{shard}/manifest.json",
        "group": base + "/jobs/{model}/{sampler}-{steps}/shard-{shard}/group-{group}.json",
        "aggregate": base + "/aggregate/manifest.json",
        "submitit": base + "/.submitit",
        "records": base + "/.submitit/records",
        "state": base + "/.state",
        "log_noise": base + "/logs/noise/{model}_T{steps}_shard-{shard}.log",
        "log_baseline": base + "/logs/baseline/{model}_{sampler}-{steps}_shard-{shard}.log",
        "log_sample": base + "/logs/sample/{model}_{sampler}-{steps}_shard-{shard}_group-{group}.log",
        "log_aggregate": base + "/logs/aggregate.log",
        "log_study_config": base + "/logs/study_config.log",
        "log_analysis": base + "/logs/analysis_{part}.log",
    }


def targets(config: Mapping[str, Any]) -> dict[str, list[str]]:
    p = paths(config)
    out: dict[str, list[str]] = {"noise": [], "baseline": [], "group": []}
    for m in config["models"]:
        for steps in config["steps"]:
            for k in range(len(shards(config))):
                out["noise"].append(p["noise"].format(model=m["name"], steps=steps, shard=k))
                for sampler in config["samplers"]:
                    w = dict(model=m["name"], sampler=sampler, steps=steps, shard=k)
                    gs = groups(config, steps, m["name"], sampler)
                    if gs:  # a cell without parallel solvers has nothing to compare with a baseline
                        out["baseline"].append(p["baseline"].format(**w))
                    for g in range(len(gs)):
                        out["group"].append(p["group"].format(group=g, **w))
    return out


def _common(
    config: Mapping[str, Any],
    model: str,
    sampler: str,
    steps: int,
    shard: int,
    weights: Mapping[str, str | None] | None = None,
    seeds: list[int] | None = None,
) -> dict[str, Any]:
    seeds = shards(config)[shard] if seeds is None else seeds
    m = model_spec(config, model)
    return {
        "study": config["study"],
        "results_dir": config["results_dir"],
        "model": ModelConfig(
            name=m["name"],
            cfg_scale=float(m["cfg_scale"]),
            options=dict(m.get("options") or {}),
            path=m.get("path"),
            dtype=m.get("dtype"),
            chunk_size=m.get("chunk_size"),
            weights=(weights or {}).get(model),
        ),
        "sampler": sampler,
        "steps": int(steps),
        "shard": int(shard),
        "seeds": tuple(seeds),
        "conditions": tuple(conditions_for(m, config, seeds)),
        "device": config["device"],
        "world_size": int(config["world_size"]),
        "ranks_per_gpu": int(config.get("ranks_per_gpu", 1)),
        "threads": int(config["threads"]),
        "checkpoint_every_s": float(config["checkpoint_every_s"]),
        "save_iterates": int(config["save_iterates"]),
        "fidelity_decode": bool(config["fidelity_decode"]),
        "progress": bool(config["progress"]),
        "deterministic": bool(config["deterministic"]),
        "state_dir": paths(config)["state"],
        "noise": paths(config)["noise"].format(model=model, steps=steps, shard=shard),
    }


def _run(config: Mapping[str, Any], model: str, sampler: str, steps: int, shard: int, r: Mapping[str, Any]) -> RunSpec:
    """One run of a job; `r["config"]` is carried as is when it is a SolverConfig already (Plan builds each
    cell's once), else built (and validated) from its dict."""
    d = run_dir(config["results_dir"], config["study"], model, sampler, steps, r["tag"], shard)
    cfg = r["config"]
    return RunSpec(
        str(r["solver"]), str(r["tag"]), cfg if isinstance(cfg, SolverConfig) else SolverConfig.from_dict(cfg), str(d)
    )


def baseline_spec(
    config: Mapping[str, Any],
    model: str,
    sampler: str,
    steps: int,
    shard: int,
    weights: Mapping[str, str | None] | None = None,
    seeds: list[int] | None = None,
) -> JobSpec:
    """The job of the sequential run of one (model, sampler, steps, seed shard); `weights`: {model: weights
    digest} (parataa.jobs.identity.study_weights)."""
    seq = {"solver": "sequential", "tag": "sequential", "config": preset("sequential")}
    common = _common(config, model, sampler, steps, shard, weights, seeds)
    common["fidelity_decode"] = False  # the baseline is the reference: it has no fidelity table
    common["world_size"] = 1  # sequential: one process on one device, whatever the sampling jobs' world size
    common["ranks_per_gpu"] = 1
    return JobSpec(
        name=f"{config['study']}/{model}/{sampler}-{steps}/shard-{shard}/sequential",
        baseline=None,
        runs=(_run(config, model, sampler, steps, shard, seq),),
        **common,
    )


def group_spec(
    config: Mapping[str, Any],
    model: str,
    sampler: str,
    steps: int,
    shard: int,
    group: int,
    weights: Mapping[str, str | None] | None = None,
    gs: list[list[dict[str, Any]]] | None = None,
    seeds: list[int] | None = None,
) -> JobSpec:
    """The job of one group of `runs_per_job` parallel cells of one seed shard (`gs`: the cell's groups, when
    the caller has them already)."""
    gs = groups(config, int(steps), model, sampler) if gs is None else gs
    if not 0 <= group < len(gs):
        raise ValueError(f"group {group} does not exist: {len(gs)} job groups at steps={steps}")
    baseline = paths(config)["baseline"].format(model=model, sampler=sampler, steps=steps, shard=shard)
    return JobSpec(
        name=f"{config['study']}/{model}/{sampler}-{steps}/shard-{shard}/group-{group}",
        baseline=str(Path(baseline).parent),
        runs=tuple(_run(config, model, sampler, steps, shard, r) for r in gs[group]),
        **_common(config, model, sampler, steps, shard, weights, seeds),
    )


def count(config: Mapping[str, Any]) -> dict[str, int]:
    """How many runs and jobs the study has (for the start-up summary)."""
    n_shards = len(shards(config))
    cells = jobs = 0
    for steps in config["steps"]:
        for m in config["models"]:
            for sampler in config["samplers"]:
                n = len(solver_runs(config, steps, m["name"], sampler))
                cells += n + 1 if n else 0  # a cell without parallel solvers plans no baseline either
                jobs += -(-n // int(config["runs_per_job"])) + 1 if n else 0
    return {
        "cells": cells,
        "runs": cells * n_shards,
        "jobs": jobs * n_shards,
        "shards": n_shards,
        "samples": len(config["seeds"]) * cells,
    }


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Job:
    """One job of the plan: its rule ("baseline" or "sample"), wildcards, declared output, the record it leaves
    when it finishes (parataa.jobs.verify.job_record) and its spec."""

    rule: str
    wildcards: tuple[tuple[str, Any], ...]
    output: str
    record: str
    spec: JobSpec


class Plan:
    """Every job of a validated study config, built once: each cell's solver grid is expanded once (not once per
    job), so planning costs time linear in the number of jobs. `weights`: {model: weights digest}
    (parataa.jobs.identity.study_weights), carried into every job's model config.

    `stale()` compares what each finished job's record says it was made for (its portable spec) and whether its
    runs are intact with the job the config asks for now, and reads nothing else: no Snakemake metadata, so a
    changed option, a copied or moved results dir and a fresh clone plan the same jobs. It never deletes or
    writes anything."""

    def __init__(self, config: Mapping[str, Any], weights: Mapping[str, str | None] | None = None) -> None:
        self.config = config
        self.paths = paths(config)
        self.weights = dict(weights or {})
        self.shards = shards(config)
        self._groups: dict[tuple[int, str, str], list[list[dict[str, Any]]]] = {}
        self.jobs: dict[str, Job] = {}
        for m in config["models"]:
            for steps in config["steps"]:
                for k, seeds in enumerate(self.shards):
                    for sampler in config["samplers"]:
                        self._add(m["name"], sampler, int(steps), k, seeds)

    def groups(self, steps: int, model: str, sampler: str) -> list[list[dict[str, Any]]]:
        """The cell's job groups, each run's SolverConfig built and validated once here and carried, the same
        object, into the spec of every seed shard's job."""
        key = (int(steps), model, sampler)
        if key not in self._groups:
            self._groups[key] = [
                [{**r, "config": SolverConfig.from_dict(r["config"])} for r in g]
                for g in groups(self.config, int(steps), model, sampler)
            ]
        return self._groups[key]

    def _add(self, model: str, sampler: str, steps: int, shard: int, seeds: list[int]) -> None:
        w = dict(model=model, sampler=sampler, steps=steps, shard=shard)
        gs = self.groups(steps, model, sampler)
        if not gs:
            return  # no parallel solver in this cell (the study's grids name none): no baseline either
        folder = Path(self.paths["group"].format(group=0, **w)).parent
        spec = baseline_spec(self.config, model, sampler, steps, shard, self.weights, seeds)
        out = self.paths["baseline"].format(**w)
        self.jobs[out] = Job("baseline", tuple(w.items()), out, str(folder / "baseline.json"), spec)
        for g in range(len(gs)):
            spec = group_spec(self.config, model, sampler, steps, shard, g, self.weights, gs, seeds)
            out = self.paths["group"].format(group=g, **w)
            self.jobs[out] = Job("sample", (*w.items(), ("group", g)), out, out, spec)

    def job(self, rule: str, model: str, sampler: str, steps: Any, shard: Any, group: Any = None) -> Job:
        w = dict(model=model, sampler=sampler, steps=int(steps), shard=int(shard))
        out = self.paths["baseline"].format(**w) if rule == "baseline" else self.paths["group"].format(group=group, **w)
        return self.jobs[out]

    def targets(self, rule: str) -> list[str]:
        return [j.output for j in self.jobs.values() if j.rule == rule]

    def stale(self) -> dict[str, str]:
        """{declared output: why the job must run again} for every finished job (its output exists) whose
        record is missing, was made for another spec, or vouches for runs that are missing or damaged."""
        from .verify import check_record

        out: dict[str, str] = {}
        for job in self.jobs.values():
            if not Path(job.output).exists():
                continue  # not run yet: Snakemake plans it anyway
            why = check_record(job.record, job.spec.portable())
            if why:
                out[job.output] = why[0] + (f" (and {len(why) - 1} more)" if len(why) > 1 else "")
        return out
