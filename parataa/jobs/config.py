"""Study-config validation: JSON Schema (workflow/schemas/config.schema.yaml, with the solver names and the choices
of the solver options filled in from the solver registry) with defaults filled in, unknown keys rejected with a
close-match suggestion, then the checks a schema cannot express."""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "SCHEMA", "fill_registry", "load_schema", "validate_config"]

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The study config is invalid; the message names every bad field, its value and how to fix it."""


def load_schema(path: str | Path = SCHEMA) -> dict[str, Any]:
    """The study schema: the YAML file (its fields, their descriptions and values) with what the solver registry
    defines filled in (`fill_registry`)."""
    import yaml

    return fill_registry(yaml.safe_load(Path(path).read_text()))


def fill_registry(schema: dict[str, Any]) -> dict[str, Any]:
    """Fill in `schema` (in place; returned) from the solver registry, read now (parataa/solver_config.py,
    parataa/stopping.py): one `solvers` property per parallel solver, each a `solver_block`; the `enum` of each
    option that takes a name (`definitions.<option>`) and its choices in place of {choices} in the descriptions.
    Raises ValueError when the solver block's options are not SolverConfig's user options."""
    from ..solver_config import PARALLEL_SOLVERS, USER_OPTIONS, describe_choices, option_choices

    defs = schema["definitions"]
    block = defs["solver_block"]["properties"]
    if set(block) != set(USER_OPTIONS):
        missing, extra = sorted(set(USER_OPTIONS) - set(block)), sorted(set(block) - set(USER_OPTIONS))
        raise ValueError(
            f"the study schema's definitions.solver_block.properties must be SolverConfig's user options "
            f"(parataa.solver_config.USER_OPTIONS): missing {missing}, unknown {extra}; give each missing option its "
            "description and values in workflow/schemas/config.schema.yaml and remove the unknown ones"
        )
    for option, values in option_choices().items():
        words = describe_choices(option)
        defs[option]["enum"] = list(values)
        for node in (defs[option], block[option]):
            node["description"] = node["description"].replace("{choices}", words)
    solvers = schema["properties"]["solvers"]
    solvers["properties"] = {name: {"$ref": "#/definitions/solver_block"} for name in PARALLEL_SOLVERS}
    return schema


def _where(path: Any) -> str:
    out = "config"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _resolve(schema: dict[str, Any], sub: dict[str, Any]) -> dict[str, Any]:
    ref = sub.get("$ref")
    if ref and ref.startswith("#/"):
        node: Any = schema
        for part in ref[2:].split("/"):
            node = node[part]
        return node
    return sub


def _messages(schema: dict[str, Any], errors: list[Any]) -> list[str]:
    msgs = []
    for e in errors:
        where = _where(e.absolute_path)
        if e.validator == "additionalProperties":
            allowed = sorted(_resolve(schema, e.schema).get("properties", {}))
            extra = sorted(set(e.instance) - set(allowed))
            for k in extra:
                lower = {a.lower(): a for a in allowed}
                close = [lower[c] for c in difflib.get_close_matches(k.lower(), list(lower), n=1, cutoff=0.6)]
                hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {allowed}"
                msgs.append(f"{where}.{k}: unknown key{hint}")
            continue
        if e.validator == "enum":
            close = difflib.get_close_matches(str(e.instance), [str(x) for x in e.validator_value], n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msgs.append(f"{where}: {e.instance!r} is not one of {e.validator_value}{hint}")
            continue
        desc = _description(schema, e)
        if e.validator == "pattern":
            msgs.append(f"{where}: {e.instance!r} does not match the allowed form: {desc or e.validator_value}")
        elif e.validator in ("anyOf", "oneOf"):
            msgs.append(f"{where}: {e.instance!r} is not allowed; {desc}" if desc else f"{where}: {e.message}")
        else:
            msgs.append(f"{where}: {e.message}" + (f" ({desc})" if desc else ""))
    return msgs


def _description(schema: dict[str, Any], e: Any) -> str | None:
    """The description of the schema node that failed, else of the property it belongs to."""
    for node in (e.schema, *(c.schema for c in (e.parent,) if c is not None)):
        if isinstance(node, dict):
            node = _resolve(schema, node)
            if node.get("description"):
                return str(node["description"])
    return None


def _leaf(e: Any) -> Any:
    """anyOf/oneOf failures report the whole alternative set; descend to the error at the deepest path (the
    list element or option that failed), and stop at the node where every alternative failed at once."""
    while e.validator in ("anyOf", "oneOf") and e.context:
        best = max(e.context, key=lambda c: len(c.absolute_path))
        if len(best.absolute_path) <= len(e.absolute_path):
            break
        e = best
    return e


def _with_defaults(validator_class: Any) -> Any:
    from jsonschema import validators

    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    # An integer field takes Python ints only: 25.0 would pass JSON Schema's integer test and then break the
    # job (seeds on a command line, step counts in paths).
    checker = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool)
    )
    return validators.extend(validator_class, {"properties": set_defaults}, type_checker=checker)


def validate_config(config: Mapping[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated copy of `config` with every default filled in; raises ConfigError listing all problems."""
    from jsonschema import Draft7Validator

    schema = schema or load_schema()
    cfg = copy.deepcopy(dict(config))
    v = _with_defaults(Draft7Validator)(schema)
    msgs = _matrix_size(cfg, schema)  # first: validating 200,000 seeds alone takes seconds
    if not msgs:
        errors = sorted(v.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
        msgs = _messages(schema, [_leaf(e) for e in errors]) + _non_finite(cfg)
    if not msgs:
        msgs = _semantic(cfg)
    if msgs:
        raise ConfigError("invalid study config:\n  " + "\n  ".join(dict.fromkeys(msgs)))
    return cfg


def _non_finite(cfg: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """NaN and infinities pass JSON Schema's minimum/maximum tests; no field of a study takes them. Named at the
    field where they are written (solver_defaults, not the solver that inherits them)."""
    if isinstance(cfg, float) and not math.isfinite(cfg):
        return [f"{_where(path)}: {cfg!r} is not a finite number"]
    if isinstance(cfg, Mapping):
        return [m for k, v in cfg.items() for m in _non_finite(v, (*path, k))]
    if isinstance(cfg, list):
        return [m for i, v in enumerate(cfg) for m in _non_finite(v, (*path, i))]
    return []


def _matrix_size(cfg: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Refuse a study whose plan would be too large for Snakemake (minutes and GBs to build the DAG) before
    anything is validated or expanded. Counts are upper bounds from the list lengths alone (grid points that
    coincide are counted once only after expansion). Values of the wrong type are left to the schema."""
    default = {k: schema["properties"][k]["default"] for k in ("seeds_per_shard", "runs_per_job", "max_jobs")}
    get = {k: cfg.get(k, d) for k, d in default.items()}
    lists = [cfg.get(k) for k in ("seeds", "models", "samplers", "steps")]
    solvers = cfg.get("solvers")
    if not (all(isinstance(v, int) and v >= 1 for v in get.values()) and all(isinstance(v, list) for v in lists)):
        return []
    if not isinstance(solvers, dict) or not all(isinstance(b, dict) or b is None for b in solvers.values()):
        return []
    limit = get["max_jobs"]
    n_shards = -(-len(cfg["seeds"]) // get["seeds_per_shard"])
    per_shard = len(cfg["models"]) * len(cfg["samplers"])
    blocks = list(solvers.values())
    for grid in cfg.get("grids") or []:  # a grid's blocks counted as if every cell ran them (an upper bound)
        extra = grid.get("solvers") if isinstance(grid, dict) else None
        if isinstance(extra, dict):
            blocks += [b for b in extra.values() if isinstance(b, dict) or b is None]
    runs = 1
    for block in blocks:
        runs_block = 1
        for v in (block or {}).values():
            runs_block *= len(v) if isinstance(v, list) else 1
        runs += runs_block
    groups = -(-(runs - 1) // get["runs_per_job"])
    jobs = n_shards * per_shard * len(cfg["steps"]) * (1 + groups)
    if jobs <= limit:
        return []
    cfg = {**cfg, **get}
    return [
        f"config: the study plans up to {jobs:,} jobs, above max_jobs = {limit:,}: {n_shards:,} seed shard(s) "
        f"({len(cfg['seeds']):,} seeds, seeds_per_shard {cfg['seeds_per_shard']}) x {per_shard} model/sampler "
        f"pair(s) x {len(cfg['steps'])} step count(s) x {1 + groups} job(s) (the baseline and {groups} group(s) "
        f"of up to runs_per_job = {cfg['runs_per_job']} of {runs - 1} solver cells). Snakemake takes minutes and "
        f"GBs to plan 100,000 jobs: raise seeds_per_shard or runs_per_job, or set max_jobs: {jobs} in the config "
        f"(or --config max_jobs={jobs}) if you mean it"
    ]


def _semantic(cfg: dict[str, Any]) -> list[str]:
    from ..conditions import check_conditions
    from ..samplers import FLOW_MODELS, applies, samplers_for
    from .plan import solver_runs

    msgs = []
    names = [m["name"] for m in cfg["models"]]
    for n in sorted({n for n in names if names.count(n) > 1}):
        msgs.append(f"config.models: model {n!r} listed twice; list each model once")
    for i, m in enumerate(cfg["models"]):
        for problem in check_conditions(m["name"], m["conditions"], m["options"]):
            msgs.append(f"config.models[{i}].conditions{problem}")
    for i, grid in enumerate(cfg.get("grids") or []):
        for key, have in (("models", names), ("samplers", cfg["samplers"]), ("steps", cfg["steps"])):
            extra = [v for v in grid.get(key) or [] if v not in have]
            if extra:
                msgs.append(f"config.grids[{i}].{key}: {extra} not in the study's {key} {list(have)}")
    for i, m in enumerate(cfg["models"]):  # a model x sampler pair that does not apply is skipped, not run
        if not any(applies(m["name"], s) for s in cfg["samplers"]):
            msgs.append(
                f"config.samplers: model {m['name']} (config.models[{i}]) takes none of the samplers "
                f"{list(cfg['samplers'])}; add {' or '.join(samplers_for(m['name']))} to samplers, or drop the model"
            )
    for i, grid in enumerate(cfg.get("grids") or []):
        g_models, g_samplers = grid.get("models") or names, grid.get("samplers") or cfg["samplers"]
        if not any(applies(n, s) for n in g_models for s in g_samplers):
            msgs.append(
                f"config.grids[{i}]: no model of {list(g_models)} takes a sampler of {list(g_samplers)}, so the "
                f"grid runs nowhere; pair flow-euler with flow models ({', '.join(FLOW_MODELS)}), ddim, ddpm or "
                "dpmpp-2m with the others"
            )
    empty = []
    for steps in cfg["steps"]:
        for name in names:
            for sampler in cfg["samplers"]:
                try:
                    if not solver_runs(cfg, steps, name, sampler):
                        empty.append(f"{name}/{sampler}-{steps}")
                except ValueError as e:
                    msgs.append(f"config.{e}")
    for steps in cfg["steps"]:  # a step count no cell runs a parallel solver at is a mistake, not a study
        if all(f"{n}/{s}-{steps}" in empty for n in names for s in cfg["samplers"]):
            msgs.append(
                f"config.steps: {steps} has no parallel solver in any cell (solvers is {cfg['solvers']!r} and no "
                f"grid names steps {steps}); add a solver to `solvers` or a grid with steps: [{steps}], or drop it"
            )
    return msgs
