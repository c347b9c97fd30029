"""Readable names for solver tags, and one colour per solver variant shared by every figure of a study.

A tag (`parataa.solver_config.solver_tag`, docs/STORAGE.md) is the solver's name (`+` spelled `plus`) followed by
`_`-separated parts: `m<history>`, `k<order>`, `w<window>`, the splitting where it is not the solver's own,
`tol<abs_tol>` (or `sum<sum_tol>` for the summed-residual rule, then `frz<freeze_frac>` where it freezes a
converged prefix, kept verbatim in the variant; `ff<floor_freeze>` where it keeps the prefix at the precision
floor, likewise verbatim; `ptol<picard_tol>` for Picard), and only where
they differ from the solver's defaults `rtol<rel_tol>`, `ridge<lambda>`, `g<tol_scale>`, `init<init>`,
`it<max_iters>`. Solver names come from `parataa.solver_config.PRESETS`, so a preset added there is recognised
here without changes; a part this grammar does not know is kept verbatim in the label (never dropped), so a
new option still tells its runs apart.

Two levels of name:
- the *variant*: the solver and what changes its behaviour rather than its budget (splitting, initialisation,
  stopping rule, tolerance scale, unknown options), e.g. "TAA", "TAA (copy init)", "TAA (euler splitting)".
  Figures give each variant one colour and tables pick each variant's best setting (the paper chose m and k by
  grid search);
- the *setting*: the variant plus its hyperparameters, e.g. "TAA m=3 k=T W=T tol 1e-3".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from parataa.solver_config import INITS, PRESETS, SPLITTINGS, TOL_SCALES

__all__ = [
    "sampler_label", "ParsedTag", "parse_tag", "variant_label", "setting_label", "solver_order", "palette", "DISPLAY"
]

# How the samplers are named for a reader (a sampler without an entry is shown upper-cased)
SAMPLER_DISPLAY = {"ddim": "DDIM", "ddpm": "DDPM", "dpmpp-2m": "DPM++(2M)", "flow-euler": "Flow-Euler"}


def sampler_label(sampler: str) -> str:
    """"DDIM", "DDPM", "DPM++(2M)" (DPM-Solver++(2M)), "Flow-Euler" (flow matching, Euler steps)."""
    return SAMPLER_DISPLAY.get(str(sampler), str(sampler).upper())


# How the study's solvers are named for a reader; a preset without an entry is shown by its own name.
DISPLAY = {
    "sequential": "sequential",
    "fp": "FP",
    "fp+": "FP+",
    "aa": "AA",
    "taa": "TAA",
    "picard": "ParaDiGMS (Picard)",
    "taa-euler": "TAA-Euler",
}
# Parts that set a solver's budget or tolerance (its hyperparameters), in the order a label lists them.
HYPER = ("m", "k", "w", "tol", "sum", "ptol", "rtol", "ridge", "it")
_PART = re.compile(r"^(ptol|rtol|ridge|tol|sum|init|it|m|k|w|g)(.+)$")
_INT_PARTS = {"m", "k", "w", "it"}
_NUM = re.compile(r"^\d+(\.\d+)?(e-?\d+)?$")


def _known(key: str | None, val: str) -> bool:
    """Whether `key` + `val` is a part of the grammar (else the part is kept verbatim)."""
    if key in _INT_PARTS:
        return val.isdigit()
    if key in ("tol", "sum", "ptol", "rtol", "ridge"):
        return bool(_NUM.match(val))
    if key == "init":
        return val in INITS
    if key == "g":
        return val in TOL_SCALES
    return False


@dataclass(frozen=True)
class ParsedTag:
    tag: str
    solver: str
    params: dict[str, str] = field(default_factory=dict)  # hyperparameter parts, e.g. {"m": "2", "k": "50"}
    variant_parts: tuple[str, ...] = ()  # readable: "copy init", "g=beta", unknown parts verbatim


def _solver_names() -> list[str]:
    return sorted(PRESETS, key=len, reverse=True)


def parse_tag(tag: str) -> ParsedTag:
    """Split a tag into solver name, hyperparameters and variant parts (see the module docstring)."""
    tag = str(tag)
    name, rest = None, ""
    for n in _solver_names():
        enc = n.replace("+", "plus")
        if tag == enc or tag.startswith(enc + "_"):
            name, rest = n, tag[len(enc) + 1 :]
            break
    if name is None:  # a solver this checkout does not know: its name is the tag's first part
        head, _, rest = tag.partition("_")
        name = head.replace("plus", "+")
    params: dict[str, str] = {}
    variant: list[str] = []
    own = PRESETS.get(name, {})
    for part in filter(None, rest.split("_")):
        m = _PART.match(part)
        key, val = (m.group(1), m.group(2)) if m else (None, part)
        if not _known(key, val):
            key, val = None, part
        if key == "sum" and own.get("stop") != "sum":
            variant.append("sum rule")  # another stopping rule than the solver's own
        if key in HYPER and key not in params:
            params[key] = val
        elif key == "init":
            variant.append(f"{val} init")
        elif key == "g":
            variant.append(f"g={val}")
        elif key is None and part in SPLITTINGS:
            variant.append(f"{part} splitting")
        else:
            variant.append(part)
    return ParsedTag(tag, name, params, tuple(variant))


def _display(name: str) -> str:
    return DISPLAY.get(name, name)


def variant_label(tag: str) -> str:
    """'TAA', 'TAA (copy init)', 'FP+ (g=beta)': one per solver variant, the same for every setting of it."""
    p = parse_tag(tag)
    base = _display(p.solver)
    return f"{base} ({', '.join(p.variant_parts)})" if p.variant_parts else base


def setting_label(tag: str, steps: int | None = None) -> str:
    """The variant plus its hyperparameters, 'TAA m=2 k=T W=T'; k and W equal to `steps` print as T."""
    p = parse_tag(tag)
    out = [variant_label(tag)]
    for key in HYPER:
        if key not in p.params:
            continue
        val = p.params[key]
        if key in ("k", "w") and steps is not None and val == str(int(steps)):
            val = "T"
        if key in ("m", "k"):
            out.append(f"{key}={val}")
        elif key == "w":
            out.append(f"W={val}")
        elif key == "it":
            out.append(f"max {val} it")
        elif key == "ptol":
            out.append(f"tol {val}")
        elif key == "sum":
            out.append(f"sum {val}")
        else:
            out.append(f"{key} {val}")
    return " ".join(out)


def solver_order(tags_or_labels: Iterable[str]) -> list[str]:
    """Variant labels in a stable reading order: the presets' order (FP, FP+, AA, TAA, Picard, then newer
    presets), then the plain variant before its modifications, then alphabetically."""
    rank = {_display(n): i for i, n in enumerate(PRESETS)}
    labels = sorted(set(tags_or_labels))

    def key(label: str) -> tuple[int, int, str]:
        base = max((d for d in rank if label == d or label.startswith(d + " (")), key=len, default=None)
        if base is None:
            return (len(rank), 0, label)
        return (rank[base], 0 if label == base else 1, label)

    return sorted(labels, key=key)


_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#ad494a",
)


def palette(labels: Sequence[str]) -> dict[str, str]:
    """One colour per variant label (in `solver_order`), the same in every figure made from the same labels."""
    ordered = solver_order(labels)
    return {lab: _COLOURS[i % len(_COLOURS)] for i, lab in enumerate(ordered)}
