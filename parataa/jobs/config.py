"""Study-config validation: JSON Schema (workflow/schemas/config.schema.yaml) with defaults filled in,
unknown keys rejected with a close-match suggestion, then the checks a schema cannot express."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "SCHEMA", "load_schema", "validate_config"]

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The study config is invalid; the message names every bad field, its value and how to fix it."""


def load_schema(path: str | Path = SCHEMA) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text())


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
        desc = e.schema.get("description") if isinstance(e.schema, dict) else None
        msgs.append(f"{where}: {e.message}" + (f" ({desc})" if desc else ""))
    return msgs


def _with_defaults(validator_class: Any) -> Any:
    from jsonschema import validators

    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: Mapping[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated copy of `config` with every default filled in; raises ConfigError listing all problems."""
    from jsonschema import Draft7Validator

    schema = schema or load_schema()
    cfg = copy.deepcopy(dict(config))
    v = _with_defaults(Draft7Validator)(schema)
    errors = sorted(v.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    # anyOf failures report the whole alternative set; show the deepest, most specific cause instead.
    flat = []
    for e in errors:
        if e.validator in ("anyOf", "oneOf") and e.context:
            best = max(e.context, key=lambda c: len(c.absolute_path))
            flat.append(best if len(best.absolute_path) > len(e.absolute_path) else e)
        else:
            flat.append(e)
    msgs = _messages(schema, flat)
    if not msgs:
        msgs = _semantic(cfg)
    if msgs:
        raise ConfigError("invalid study config:\n  " + "\n  ".join(dict.fromkeys(msgs)))
    return cfg


def _semantic(cfg: dict[str, Any]) -> list[str]:
    from .plan import solver_runs

    msgs = []
    names = [m["name"] for m in cfg["models"]]
    for n in sorted({n for n in names if names.count(n) > 1}):
        msgs.append(f"config.models: model {n!r} listed twice; list each model once")
    for i, m in enumerate(cfg["models"]):
        if m["name"] == "gmm":
            bad = [c for c in m["conditions"] if not isinstance(c, int)]
            if bad:
                msgs.append(f"config.models[{i}].conditions: gmm takes class labels (integers), got {bad}")
            if m["name"] == "gmm" and m["options"].get("classes") is not None:
                if not isinstance(m["options"]["classes"], int) or m["options"]["classes"] < 1:
                    msgs.append(
                        f"config.models[{i}].options.classes: must be an integer >= 1, got {m['options']['classes']!r}"
                    )
            unknown = sorted(set(m["options"]) - {"dim", "classes", "spread", "seed"})
            for k in unknown:
                close = difflib.get_close_matches(k, ["dim", "classes", "spread", "seed"], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "; allowed: dim, classes, spread, seed"
                msgs.append(f"config.models[{i}].options.{k}: unknown gmm option{hint}")
        elif set(m["options"]) - {"sample_shape"}:
            msgs.append(
                f"config.models[{i}].options: {m['name']} takes only 'sample_shape' here, got {sorted(m['options'])}"
            )
    for i, grid in enumerate(cfg.get("grids") or []):
        for key, have in (("models", names), ("samplers", cfg["samplers"]), ("steps", cfg["steps"])):
            extra = [v for v in grid.get(key) or [] if v not in have]
            if extra:
                msgs.append(f"config.grids[{i}].{key}: {extra} not in the study's {key} {list(have)}")
    for steps in cfg["steps"]:
        for name in names:
            for sampler in cfg["samplers"]:
                try:
                    solver_runs(cfg, steps, name, sampler)
                except ValueError as e:
                    msgs.append(f"config.{e}")
    return msgs
