"""Audit of the paper's claims (analysis/paper_claims.yaml) against stored results: two verdicts per claim.

1. **On the paper's models** (DiT-XL/2, SD v1.5, or the model a claim names): decided only by results of those
   models (`decide`: reproduced / not reproduced / not measurable here, with the command that measures it).
   Embedded or analytic results never count here.
2. **On the embedded models** (tiny-dit, tiny-sd, and the analytic gmm where a claim is about it): the claim's
   shape restated so this study can decide it, as `checks` over the study's settings (analysis.yardstick:
   steps at the stop and to 40 dB, the rule-free yardstick). Each check gives one outcome per cell (and per
   compared solver, metric or series); `decide_embedded` (pure) turns them into reproduced (all hold) /
   not reproduced (none holds) / partly reproduced / not run in this study (no cell has what the check needs),
   or not measurable here / not applicable where the claim says so.

The two are never mixed. Written as Markdown (figures linked relative to audit.md) and as one self-contained
HTML page (figures embedded as base64 PNG).
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .labels import setting_label
from .tables import per_seed as samples_per_seed
from .tables import setting_keys

__all__ = [
    "REPRODUCED",
    "NOT_REPRODUCED",
    "PARTLY",
    "NOT_RUN",
    "NOT_MEASURABLE",
    "NOT_APPLICABLE",
    "CLAIMS_PATH",
    "Verdict",
    "Outcome",
    "EmbeddedResult",
    "ClaimResult",
    "load_claims",
    "decide",
    "decide_embedded",
    "run_check",
    "measure",
    "measure_embedded",
    "audit",
    "write_report",
]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
PARTLY = "partly reproduced"
NOT_RUN = "not run in this study"
NOT_MEASURABLE = "not measurable here"
NOT_APPLICABLE = "not applicable"
PAPER_VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURABLE, NOT_APPLICABLE)
EMBEDDED_VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_RUN, NOT_MEASURABLE, NOT_APPLICABLE)
CLAIMS_PATH = Path(__file__).with_name("paper_claims.yaml")
KINDS = ("range", "at_most", "at_least", "sequence", "fewer_than", "ordering", "setting", "study", "checks")
CHECK_KINDS = ("fewer_than", "range", "at_most", "at_least", "monotone")
GROUP = ["model", "sampler", "steps"]
METRIC_NAMES = {
    "its_stop_mean": "steps at the stop",
    "to_30db_mean": "steps to 30 dB",
    "to_40db_mean": "steps to 40 dB",
    "to_50db_mean": "steps to 50 dB",
    "speedup_to_40db": "speed-up to 40 dB",
    "speedup_stop": "speed-up at the stop",
    "speedup_time": "wall-clock speed-up",
}
HIGHER_IS_BETTER = ("speedup_to_40db", "speedup_stop", "speedup_time")


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str


@dataclass(frozen=True)
class Outcome:
    """One comparison of a check in one cell: whether the claim holds there, and the numbers."""

    holds: bool
    text: str
    tie: bool = False  # both sides at the ceiling (T parallel steps, the most a solve takes): neither for nor against

    @property
    def word(self) -> str:
        return "tie" if self.tie else "holds" if self.holds else "FAILS"


@dataclass
class EmbeddedResult:
    statement: str
    verdict: Verdict
    outcomes: list[Outcome] = field(default_factory=list)
    figure: str | None = None


@dataclass
class ClaimResult:
    claim: dict[str, Any]
    verdict: Verdict  # on the paper's models
    measured: str
    embedded: EmbeddedResult


def load_claims(path: str | Path = CLAIMS_PATH) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ValueError(f"{path}: expected a mapping with a 'claims' list")
    ids = set()
    for c in data["claims"]:
        for key in ("id", "claim", "source", "setting", "models", "measure", "command", "embedded"):
            if key not in c:
                raise ValueError(f"{path}: claim {c.get('id', '?')!r} lacks {key!r}")
        if c["id"] in ids:
            raise ValueError(f"{path}: duplicate claim id {c['id']!r}")
        ids.add(c["id"])
        kind = c["measure"].get("kind")
        if kind not in KINDS:
            raise ValueError(f"{path}: claim {c['id']!r} measure.kind must be one of {KINDS}, got {kind!r}")
        emb = c["embedded"]
        if "not_applicable" not in emb and "not_measurable" not in emb:
            for key in ("claim", "checks"):
                if key not in emb:
                    raise ValueError(f"{path}: claim {c['id']!r} embedded lacks {key!r}")
            for chk in emb["checks"]:
                if chk.get("kind") not in CHECK_KINDS:
                    raise ValueError(
                        f"{path}: claim {c['id']!r} embedded check kind must be one of {CHECK_KINDS}, "
                        f"got {chk.get('kind')!r}"
                    )
    return data


# ------------------------------------------------------------------------------- verdict: paper's models


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "never" if v > 0 else "-inf"
    return f"{v:.3g}"


def decide(spec: Mapping[str, Any], values: Any) -> Verdict:
    """The verdict of one claim on the paper's models from its measure spec and the measured values (pure).

    values by kind: range / at_most / at_least: a list of floats (one per model x sampler x steps group);
    sequence: {seed: value}; fewer_than / ordering: a list of {solver: value} (one per group);
    setting / study: ignored. Empty or None values: not measurable here.
    """
    kind = spec["kind"]
    if kind in ("setting", "study"):
        return Verdict(NOT_MEASURABLE, spec.get("reason", f"a {kind} claim has no measurable outcome"))
    if not values:
        return Verdict(NOT_MEASURABLE, "no stored results match the claim's setting")
    if kind == "range":
        lo = spec["low"] * (1 - spec.get("rel_tol", 0.0))
        hi = spec["high"] * (1 + spec.get("rel_tol", 0.0))
        vals = [float(v) for v in values]
        out = [v for v in vals if not (lo <= v <= hi)]
        if out:
            return Verdict(
                NOT_REPRODUCED,
                f"{len(out)} of {len(vals)} value(s) outside [{lo:.3g}, {hi:.3g}]: " + ", ".join(_fmt(v) for v in out),
            )
        return Verdict(REPRODUCED, f"all {len(vals)} value(s) within [{lo:.3g}, {hi:.3g}]")
    if kind in ("at_most", "at_least"):
        tol = spec.get("abs_tol", 0.0)
        vals = [float(v) for v in values]
        if kind == "at_most":
            bound = spec["value"] + tol
            bad = [v for v in vals if not v <= bound]
            rel = "<="
        else:
            bound = spec["value"] - tol
            bad = [v for v in vals if not v >= bound]
            rel = ">="
        if bad:
            return Verdict(
                NOT_REPRODUCED,
                f"{len(bad)} of {len(vals)} value(s) fail {rel} {bound:.3g}: " + ", ".join(_fmt(v) for v in bad),
            )
        return Verdict(REPRODUCED, f"all {len(vals)} value(s) {rel} {bound:.3g}")
    if kind == "sequence":
        expected = {int(k): float(v) for k, v in spec["expected"].items()}
        got = {int(k): float(v) for k, v in dict(values).items()}
        missing = sorted(set(expected) - set(got))
        if missing:
            return Verdict(NOT_MEASURABLE, f"seeds {missing} of the claim have no stored result")
        tol = spec.get("abs_tol", 0.0)
        off = {s: got[s] for s in expected if not abs(got[s] - expected[s]) <= tol}
        if off:
            return Verdict(
                NOT_REPRODUCED,
                f"{len(off)} of {len(expected)} seed(s) differ by more than {tol:g}: "
                + ", ".join(f"seed {s}: {_fmt(got[s])} vs {_fmt(expected[s])}" for s in off),
            )
        return Verdict(REPRODUCED, f"all {len(expected)} seeds within {tol:g} of the claimed counts")
    if kind in ("fewer_than", "ordering"):
        groups = [dict(g) for g in values]
        need = [spec["subject"], *spec["others"]] if kind == "fewer_than" else list(spec["order"])
        usable = [g for g in groups if all(s in g and not math.isnan(float(g[s])) for s in need)]
        if not usable:
            return Verdict(NOT_MEASURABLE, f"no group has results of all of {need}")
        bad = []
        for g in usable:
            if kind == "fewer_than":
                ok = all(float(g[spec["subject"]]) < float(g[o]) for o in spec["others"])
            else:
                seq = [float(g[s]) for s in need]
                ok = all(a < b for a, b in zip(seq, seq[1:], strict=False))
            if not ok:
                bad.append(g)
        rel = (f"{spec['subject']} < " + ", ".join(spec["others"])) if kind == "fewer_than" else " < ".join(need)
        if bad:
            return Verdict(
                NOT_REPRODUCED,
                f"{rel} fails in {len(bad)} of {len(usable)} group(s): "
                + "; ".join(", ".join(f"{k}={_fmt(float(v))}" for k, v in g.items()) for g in bad),
            )
        return Verdict(REPRODUCED, f"{rel} holds in all {len(usable)} group(s)")
    raise ValueError(f"measure.kind must be one of {KINDS}, got {kind!r}")


def _norm(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def select(s: pd.DataFrame, selector: Mapping[str, Any]) -> pd.DataFrame:
    """Rows matching every `column: value` (or list of values) of the selector. A column the frame lacks reads
    as missing, which only `null` in the list matches (`splitting: [exact, null]`: exact, or runs stored before
    the option existed)."""
    for col, want in selector.items():
        wants = want if isinstance(want, list) else [want]
        null_ok = any(w is None for w in wants)
        wants = [w for w in wants if w is not None]
        if col not in s.columns:
            if not null_ok:
                return s.iloc[:0]
            continue
        v = s[col]
        missing = v.isna().to_numpy()
        if wants and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in wants):
            num = pd.to_numeric(v, errors="coerce").to_numpy(float)
            hit = np.isclose(num[:, None], np.asarray(wants, float)[None, :]).any(axis=1)
        else:
            hit = v.astype(str).isin([str(w) for w in wants]).to_numpy()
        s = s[hit | (missing & null_ok)]
    return s


def _cells(per_seed: pd.DataFrame, metric: str) -> pd.DataFrame:
    return (
        per_seed.groupby([*GROUP, "solver", "solver_tag"], sort=True)[metric]
        .agg(["mean", "size"])
        .reset_index()
        .rename(columns={"mean": "value", "size": "n"})
    )


def _best(cells: pd.DataFrame, by: list[str], higher_is_better: bool) -> pd.DataFrame:
    cells = cells.dropna(subset=["value"])
    if cells.empty:
        return cells
    idx = cells.groupby(by)["value"].idxmax() if higher_is_better else cells.groupby(by)["value"].idxmin()
    return cells.loc[idx.to_numpy()]


def _values(spec: Mapping[str, Any], s: pd.DataFrame, sel_spec: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """Measured values for `decide` and one human-readable line per group / cell."""
    kind, metric = spec["kind"], spec["metric"]
    higher = metric.startswith("speedup") or metric == "psnr"
    sel = select(s, sel_spec)
    if sel.empty:
        return None, []
    if kind == "sequence":
        cells = _cells(sel, metric)
        if len(cells) > 1:
            tags = ", ".join(f"{r.model}/{r.sampler}-{r.steps}/{r.solver_tag}" for r in cells.itertuples())
            return None, [f"ambiguous: the selection matches {len(cells)} cells ({tags}); narrow `select`"]
        vals = sel.groupby("seed")[metric].mean().to_dict()
        c = cells.iloc[0]
        line = f"{c.model}/{c.sampler}-{c.steps}/{c.solver_tag}: " + ", ".join(
            f"seed {k}: {_fmt(v)}" for k, v in sorted(vals.items())
        )
        return vals, [line]
    cells = _cells(sel, metric)
    if kind in ("fewer_than", "ordering"):
        need = [spec["subject"], *spec["others"]] if kind == "fewer_than" else list(spec["order"])
        cells = cells[cells["solver"].isin(need)]
        cells = _best(cells, [*GROUP, "solver"], higher) if spec.get("per_group", "best") == "best" else cells
        out, lines = [], []
        for key, g in cells.groupby(GROUP, sort=True):
            vals = {r.solver: float(r.value) for r in g.itertuples()}
            out.append(vals)
            lines.append(
                "{}/{}-{}: ".format(*key)
                + ", ".join(f"{r.solver} {_fmt(r.value)} ({r.solver_tag}, {r.n} seeds)" for r in g.itertuples())
            )
        return out, lines
    if spec.get("per_group", "best") == "best":
        cells = _best(cells, GROUP, higher)
    extra = [c for c in ("err_max", "psnr") if c in sel.columns and c != metric]
    lines = []
    for r in cells.itertuples():
        cell = sel[
            (sel["model"] == r.model)
            & (sel["sampler"] == r.sampler)
            & (sel["steps"] == r.steps)
            & (sel["solver_tag"] == r.solver_tag)
        ]
        ctx = ", ".join(f"{c} {_fmt(float(cell[c].mean()))}" for c in extra if cell[c].notna().any())
        lines.append(
            f"{r.model}/{r.sampler}-{r.steps}/{r.solver_tag}: {metric} {_fmt(r.value)} "
            f"(mean over {r.n} seeds{'; ' + ctx if ctx else ''})"
        )
    return [float(v) for v in cells["value"]], lines


def _of_models(df: pd.DataFrame, models: Sequence[str]) -> pd.Series:
    names = {_norm(m) for m in models}
    return df["model"].map(lambda m: _norm(m) in names) if not df.empty else pd.Series(dtype=bool)


def measure(
    claim: Mapping[str, Any], samples: pd.DataFrame, settings_frame: pd.DataFrame | None = None
) -> tuple[Verdict, str]:
    """(verdict, measured text) of one claim on the paper's models: only results of `claim.models` count.

    measure.kind `checks` applies the claim's embedded checks to the settings of those models' runs
    (`settings_frame`, analysis.yardstick.settings): the same shape, decided on the real models."""
    spec = claim["measure"]
    if not claim.get("paper_claim", True):
        return Verdict(NOT_APPLICABLE, spec.get("reason", "not a claim of the paper")), "—"
    if spec["kind"] in ("setting", "study"):
        return decide(spec, None), "—"
    if spec["kind"] == "checks":
        st = settings_frame if settings_frame is not None else pd.DataFrame()
        mine = st[_of_models(st, claim["models"]).to_numpy(bool)] if not st.empty else st
        outcomes = [o for chk in claim["embedded"].get("checks", []) for o in run_check(chk, mine)]
        reason = (
            f"no results of {list(claim['models'])} (real weights, the paper's GPUs) with the solvers and settings "
            "the checks compare"
        )
        v = decide_embedded(outcomes, NOT_MEASURABLE, reason)
        return v, "; ".join(o.text for o in outcomes) if outcomes else "—"
    if samples.empty:
        return Verdict(NOT_MEASURABLE, "no verified results were loaded"), "—"
    s = samples_per_seed(samples)
    is_claim_model = _of_models(s, claim["models"])
    values, lines = _values(spec, s[is_claim_model], spec.get("select", {}))
    verdict = decide(spec, values)
    if verdict.verdict == NOT_MEASURABLE:
        present = sorted(set(samples["model"]))
        if is_claim_model.any():  # the model is there, the setting (steps, cfg, solver options...) is not
            why = f"the stored results of {sorted(set(s.loc[is_claim_model, 'model']))} have no runs with " + (
                f"{dict(spec.get('select', {}))}"
            )
        else:
            why = (
                f"the claim is about {list(claim['models'])} (real weights, the paper's GPUs), the stored results "
                f"have models {present}"
            )
        verdict = Verdict(NOT_MEASURABLE, f"{verdict.reason}: {why}" + (f" ({lines[0]})" if lines else ""))
    return verdict, "; ".join(lines) if lines else "—"


# ----------------------------------------------------------------------------- verdict: embedded models


def decide_embedded(
    outcomes: Sequence[Outcome], none_verdict: str = NOT_RUN, none_reason: str = "no cell of this study has it"
) -> Verdict:
    """reproduced when every outcome holds, not reproduced when none does, partly reproduced otherwise; with no
    outcome at all, `none_verdict` (not run in this study, unless the claim says why it cannot be measured)."""
    if not outcomes:
        return Verdict(none_verdict, none_reason)
    ties = sum(o.tie for o in outcomes)
    tied = f", {ties} tie(s) at the ceiling left out" if ties else ""
    outcomes = [o for o in outcomes if not o.tie]
    if not outcomes:
        return Verdict(NOT_MEASURABLE, f"every one of the {ties} comparison(s) is a tie at the ceiling (T steps)")
    n, k = len(outcomes), sum(o.holds for o in outcomes)
    if k == n:
        return Verdict(REPRODUCED, f"holds in all {n} comparison(s){tied}")
    if k == 0:
        return Verdict(NOT_REPRODUCED, f"holds in none of {n} comparison(s){tied}")
    return Verdict(PARTLY, f"holds in {k} of {n} comparison(s){tied}")


def metric_values(st: pd.DataFrame, metric: str) -> pd.Series:
    """A settings-frame metric as a comparable number: steps to N dB are +inf when a seed never got there
    (speed-up 0), NaN when no seed was measured."""
    if metric not in st.columns:
        raise ValueError(f"metric {metric!r} is not a column of the settings frame (have {sorted(st.columns)})")
    v = st[metric].astype(float).copy()
    m = re.fullmatch(r"(?:to_(\d+)db_mean|speedup_to_(\d+)db)", metric)
    if m and "n_measured" in st.columns:
        db = m.group(1) or m.group(2)
        cens = st.get(f"n_censored_{db}db", pd.Series(0, index=st.index)).fillna(0).to_numpy() > 0
        v[cens] = math.inf if metric.startswith("to_") else 0.0
        v[st["n_measured"].fillna(0).to_numpy() == 0] = math.nan
    return v


def _num(v: float) -> str:
    if math.isnan(v):
        return "not measured"
    if math.isinf(v):
        return "never (a seed did not get there)"
    return f"{v:.3g}"


def _pick(st: pd.DataFrame, selector: Mapping[str, Any], metric: str) -> tuple[float, str] | None:
    """The best value of `metric` over the settings matching `selector`, and that setting's label."""
    s = select(st, selector)
    if s.empty:
        return None
    v = metric_values(s, metric).dropna()
    if v.empty:
        return None
    i = v.idxmax() if metric in HIGHER_IS_BETTER else v.idxmin()
    return float(v.loc[i]), _named(s.loc[i])


def _named(r: pd.Series, drop: str | None = None) -> str:
    """'TAA [m=3 k=20 W=T tol 1e-3]': the setting's variant, then its hyperparameters (less `drop`'s)."""
    label = str(r.get("label") or setting_label(r["solver_tag"], int(r["steps"])))
    variant = str(r.get("variant") or label)
    hyper = label[len(variant) :].split() if label.startswith(variant) else label.split()
    if drop:
        hyper = [h for h in hyper if not h.startswith(drop + "=")]
    return f"{variant} [{' '.join(hyper)}]" if hyper else variant


def _where(key: Sequence[Any], names: Sequence[str]) -> str:
    d = dict(zip(names, key, strict=True))
    base = f"{d['model']}/{d['sampler']}-{d['steps']}"
    extra = [f"{k}={v}" for k, v in d.items() if k not in GROUP]
    return base + (f" ({', '.join(extra)})" if extra else "")


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def run_check(check: Mapping[str, Any], st: pd.DataFrame) -> list[Outcome]:
    """The outcomes of one check on a settings frame (analysis.yardstick.settings; pure).

    Common keys: `cells` (a selector on model / sampler / steps: which cells count), `exclude` (a selector of
    settings left out). Kinds:
      fewer_than  subject, others (selectors), metrics, by (columns that must match, e.g. order), strict,
                  factor (default 1): per cell (x by) and metric and other, factor x best subject < best other
                  (<= when strict: false); factor 1.5 reads "at least 1.5x fewer"
      range       subject, metric, low, high, rel_tol: per cell, best subject in [low, high] (widened)
      at_most / at_least  subject, metric, value, abs_tol: per cell, best subject <= / >= value (+- tol)
      monotone    subject, along, metrics, series (columns fixed along a series; default: every solver-setting
                  column but `along`), abs_tol: per series with
                  >= 2 values of `along`, the metric never rises by more than abs_tol as `along` grows
    """
    kind = check["kind"]
    s = select(st, check.get("cells", {})) if not st.empty else st
    if check.get("exclude") and not s.empty:
        drop = select(s, check["exclude"]).index
        s = s.drop(index=drop)
    if s.empty:
        return []
    out: list[Outcome] = []
    if kind == "fewer_than":
        by = [*GROUP, *_as_list(check.get("by", []))]
        by = [c for c in by if c in s.columns]
        strict = bool(check.get("strict", True))
        rel = "<" if strict else "<="
        factor = float(check.get("factor", 1.0))
        if not (math.isfinite(factor) and factor >= 1.0):
            raise ValueError(f"fewer_than check: factor must be a finite number >= 1 (1: plain fewer), got {factor}")
        times = "" if factor == 1.0 else f"{factor:g} x "
        subj_sel = check["subject"]
        for key, g in s.groupby(by, sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            for metric in _as_list(check["metrics"] if "metrics" in check else check["metric"]):
                a = _pick(g, subj_sel, metric)
                if a is None:
                    continue
                for other in check["others"]:
                    b = _pick(g.drop(index=select(g, subj_sel).index), other, metric)
                    if b is None or (math.isinf(a[0]) and math.isinf(b[0])):
                        continue
                    holds = factor * a[0] < b[0] if strict else factor * a[0] <= b[0]
                    # both at T parallel steps, the most a solve can take: a strict "fewer" cannot hold or fail
                    tie = strict and a[0] == b[0] == float(g["steps"].iloc[0])
                    verdict = "a tie at the ceiling (T steps)" if tie else "holds" if holds else "fails"
                    out.append(
                        Outcome(
                            holds,
                            f"{_where(key[: len(GROUP)], GROUP)}, {METRIC_NAMES.get(metric, metric)}: {times}{a[1]} "
                            f"{_num(a[0])} {'=' if tie else rel} {b[1]} {_num(b[0])}: {verdict}",
                            tie=tie,
                        )
                    )
        return out
    if kind in ("range", "at_most", "at_least"):
        metric = check["metric"]
        for key, g in s.groupby(GROUP, sort=True):
            a = _pick(g, check["subject"], metric)
            if a is None:
                continue
            v = a[0]
            if kind == "range":
                lo = check["low"] * (1 - check.get("rel_tol", 0.0))
                hi = check["high"] * (1 + check.get("rel_tol", 0.0))
                holds = lo <= v <= hi
                want = f"in [{lo:.3g}, {hi:.3g}]"
            elif kind == "at_most":
                bound = check["value"] + check.get("abs_tol", 0.0)
                holds, want = v <= bound, f"<= {bound:.3g}"
            else:
                bound = check["value"] - check.get("abs_tol", 0.0)
                holds, want = v >= bound, f">= {bound:.3g}"
            out.append(
                Outcome(
                    bool(holds),
                    f"{_where(key, GROUP)}, {METRIC_NAMES.get(metric, metric)}: {a[1]} {_num(v)} {want}: "
                    f"{'holds' if holds else 'fails'}",
                )
            )
        return out
    if kind == "monotone":
        along = check["along"]
        tol = float(check.get("abs_tol", 0.0))
        s = select(s, check.get("subject", {}))
        # a series: one solver setting with only `along` varying (every other setting column, unless the check names
        # its series)
        named = _as_list(check["series"]) if "series" in check else setting_keys(s.columns, (along,))
        series = [c for c in (*GROUP, *named) if c in s.columns]
        if along not in s.columns:
            return []
        for key, g in s.groupby(series, sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            if g[along].nunique() < 2:
                continue
            g = g.sort_values(along)
            for metric in _as_list(check["metrics"] if "metrics" in check else check["metric"]):
                v = metric_values(g, metric).to_numpy(float)
                xs = g[along].to_numpy()
                if np.isnan(v).any():
                    continue
                rises = [
                    (xs[i], xs[i + 1]) for i in range(len(v) - 1) if not (v[i + 1] <= v[i] + tol or math.isinf(v[i]))
                ]
                holds = not rises
                sym = {"window": "W", "order": "k", "history": "m"}.get(along, along)
                steps = int(g["steps"].iloc[0])
                pts = ", ".join(
                    f"{sym}={'T' if along in ('window', 'order') and x >= steps else f'{x:g}'}: {_num(y)}"
                    for x, y in zip(xs, v, strict=True)
                )
                out.append(
                    Outcome(
                        holds,
                        f"{_where(key[: len(GROUP)], GROUP)}, {_named(g.iloc[0], sym)}, "
                        f"{METRIC_NAMES.get(metric, metric)} vs {sym}: {pts}: "
                        + ("never rises" if holds else "rises from " + ", ".join(f"{a:g} to {b:g}" for a, b in rises)),
                    )
                )
        return out
    raise ValueError(f"check kind must be one of {CHECK_KINDS}, got {kind!r}")


def measure_embedded(claim: Mapping[str, Any], st: pd.DataFrame) -> EmbeddedResult:
    """The embedded-model verdict of one claim on a settings frame (analysis.yardstick.settings)."""
    emb = claim["embedded"]
    if "not_applicable" in emb:
        return EmbeddedResult("—", Verdict(NOT_APPLICABLE, str(emb["not_applicable"]).strip()))
    statement = str(emb.get("claim", "")).strip()
    if "not_measurable" in emb:
        return EmbeddedResult(statement, Verdict(NOT_MEASURABLE, str(emb["not_measurable"]).strip()))
    outcomes: list[Outcome] = []
    for chk in emb["checks"]:
        outcomes += run_check(chk, st)
    none_verdict = NOT_MEASURABLE if emb.get("if_no_cells") == "not measurable here" else NOT_RUN
    none_reason = str(
        emb.get("no_cells_reason", "the study has no cell with the solvers and settings it needs")
    ).strip()
    return EmbeddedResult(statement, decide_embedded(outcomes, none_verdict, none_reason), outcomes, emb.get("figure"))


def audit(
    samples: pd.DataFrame,
    settings_frame: pd.DataFrame,
    claims_path: str | Path = CLAIMS_PATH,
) -> tuple[list[ClaimResult], dict[str, Any]]:
    """Both verdicts of every claim. `samples`: the study's samples; `settings_frame`: analysis.yardstick.settings
    of the study's runs. Paper verdicts count only the claim's models, embedded ones only `embedded_models`."""
    data = load_claims(claims_path)
    embedded = settings_frame
    if not settings_frame.empty and data.get("embedded_models"):
        embedded = settings_frame[_of_models(settings_frame, data["embedded_models"]).to_numpy(bool)]
    # runs on synthetic (random) weights measure cost and plumbing, never the paper's claims
    real_samples, real_settings = _real_weights(samples), _real_weights(settings_frame)
    synthetic = sorted(_synthetic_models(samples) | _synthetic_models(settings_frame))
    results = []
    for c in data["claims"]:
        verdict, measured = measure(c, real_samples, real_settings)
        fake = [m for m in synthetic if _norm(m) in {_norm(x) for x in c.get("models", [])}]
        if verdict.verdict == NOT_MEASURABLE and fake:
            verdict = Verdict(
                NOT_MEASURABLE,
                f"{verdict.reason}; the stored results of {fake} were made with synthetic random-weight checkpoints "
                "(parataa_synthetic.json in the weights folder): they do not count for the paper's claims",
            )
        results.append(ClaimResult(c, verdict, measured, measure_embedded(c, embedded)))
    return results, data


def _synthetic_models(df: pd.DataFrame) -> set[str]:
    if df.empty or "synthetic_weights" not in df.columns:
        return set()
    return set(df.loc[df["synthetic_weights"].astype(bool).to_numpy(), "model"])


def _real_weights(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose runs used real (not synthetic) weights; all rows of results stored without the flag."""
    if df.empty or "synthetic_weights" not in df.columns:
        return df
    return df[~df["synthetic_weights"].astype(bool).to_numpy()]


# -------------------------------------------------------------------------------------------- reporting


def _counts(results: Sequence[ClaimResult]) -> tuple[dict[str, int], dict[str, int]]:
    paper = {v: sum(r.verdict.verdict == v for r in results) for v in PAPER_VERDICTS}
    emb = {v: sum(r.embedded.verdict.verdict == v for r in results) for v in EMBEDDED_VERDICTS}
    return paper, emb


def headline(results: Sequence[ClaimResult]) -> str:
    paper, emb = _counts(results)
    p = ", ".join(f"{n} {v}" for v, n in paper.items() if n)
    e = ", ".join(f"{n} {v}" for v, n in emb.items() if n)
    return f"On the paper's models: {p}. On the embedded models: {e}."


def _figure_files(name: str | None, figures: Mapping[str, Sequence[Path]]) -> list[Path]:
    return [Path(p) for p in figures.get(name or "", []) if str(p).endswith(".png")]


def write_report(
    results: list[ClaimResult],
    data: Mapping[str, Any],
    out_dir: str | Path,
    context: Mapping[str, Any],
    notes: Sequence[str] = (),
    figures: Mapping[str, Sequence[Path]] | None = None,
    missing: Mapping[str, str] | None = None,
) -> list[Path]:
    """audit.md (figures linked relative to it) and audit.html (self-contained) in out_dir. `figures`: name ->
    files (PNG used); `missing`: name -> why the figure was not made. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "audit.md"
    page = out / "audit.html"
    figures = figures or {}
    missing = missing or {}

    def rel(p: Path) -> str:
        return Path(os.path.relpath(Path(p).resolve(), out.resolve())).as_posix()

    def fig_md(name: str | None) -> list[str]:
        if not name:
            return []
        files = _figure_files(name, figures)
        if files:
            return [f"![{name}]({rel(p)})" for p in files]
        return [f"*Figure `{name}` was not made: {missing.get(name, 'its inputs are not in this study')}.*"]

    lines = ["# Audit of the paper's claims", ""]
    for k, v in context.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", f"> {str(data.get('real_model_note', '')).strip()}", ""]
    lines += [f"**{headline(results)}**", ""]
    lines += fig_md(data.get("headline_figure", "steps_to_sequential"))
    lines += [
        "",
        "| claim | source | on the paper's models | on the embedded models |",
        "|---|---|---|---|",
    ]
    for r in results:
        cid = r.claim["id"]
        lines.append(
            f"| [{cid}](#{cid}) | {r.claim['source']} | {r.verdict.verdict} | **{r.embedded.verdict.verdict}** |"
        )
    for r in results:
        c = r.claim
        e = r.embedded
        lines += [
            "",
            f'<a id="{c["id"]}"></a>',
            "",
            f"## {c['id']}",
            "",
            f"**Claim.** {c['claim'].strip()}",
            "",
            f"- Source: {c['source']}",
            f"- Setting: {str(c['setting']).strip()}",
        ]
        if c.get("note"):
            lines.append(f"- Note: {str(c['note']).strip()}")
        lines += [
            "",
            f"**On the paper's models ({', '.join(c['models'])}): {r.verdict.verdict}.** {r.verdict.reason}",
            "",
            f"- Measured: {r.measured}",
        ]
        if r.verdict.verdict != REPRODUCED and r.verdict.verdict != NOT_APPLICABLE:
            lines.append(f"- To measure it: `{c['command']}`")
        lines += ["", f"**On the embedded models: {e.verdict.verdict}.** {e.verdict.reason}", ""]
        if e.statement and e.statement != "—":
            lines += [f"- Tested as: {e.statement}"]
        lines += [f"- {o.word}: {o.text.rsplit(': ', 1)[0]}" for o in e.outcomes]
        lines += [""] + fig_md(e.figure)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    md.write_text("\n".join(lines) + "\n")

    esc = html.escape
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
        ".reproduced{color:#0a6b0a}.not-reproduced{color:#a00}.partly-reproduced{color:#8a5a00}"
        ".not-measurable-here,.not-run-in-this-study,.not-applicable{color:#666}"
        ".note{background:#fff4d6;padding:8px;border-left:4px solid #e0a800}img{max-width:100%}"
        "code{background:#f2f2f2;padding:1px 4px}li.fails{color:#a00}"
    )

    def cls(v: str) -> str:
        return v.replace(" ", "-")

    def fig_html(name: str | None) -> list[str]:
        if not name:
            return []
        files = [p for p in _figure_files(name, figures) if p.is_file()]
        if not files:
            why = missing.get(name, "its inputs are not in this study")
            return [f"<p><i>Figure {esc(name)} was not made: {esc(why)}.</i></p>"]
        return [
            f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
            f"<figcaption>{esc(p.name)}</figcaption></figure>"
            for p in files
        ]

    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ParaTAA audit</title><style>{css}</style>"
        "</head><body><h1>Audit of the paper's claims</h1><ul>"
    ]
    h += [f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in context.items()]
    h.append(f"</ul><p class='note'>{esc(str(data.get('real_model_note', '')).strip())}</p>")
    h.append(f"<p><b>{esc(headline(results))}</b></p>")
    h += fig_html(data.get("headline_figure", "steps_to_sequential"))
    h.append(
        "<table><tr><th>claim</th><th>source</th><th>on the paper's models</th><th>on the embedded models</th></tr>"
    )
    for r in results:
        cid = esc(r.claim["id"])
        h.append(
            f"<tr><td><a href='#{cid}'>{cid}</a></td><td>{esc(r.claim['source'])}</td>"
            f"<td class='{cls(r.verdict.verdict)}'>{esc(r.verdict.verdict)}</td>"
            f"<td class='{cls(r.embedded.verdict.verdict)}'><b>{esc(r.embedded.verdict.verdict)}</b></td></tr>"
        )
    h.append("</table>")
    for r in results:
        c, e = r.claim, r.embedded
        h.append(f"<h2 id='{esc(c['id'])}'>{esc(c['id'])}</h2><p><b>Claim.</b> {esc(c['claim'].strip())}</p><ul>")
        h.append(f"<li>Source: {esc(c['source'])}</li><li>Setting: {esc(str(c['setting']).strip())}</li>")
        if c.get("note"):
            h.append(f"<li>Note: {esc(str(c['note']).strip())}</li>")
        h.append("</ul>")
        v = r.verdict.verdict
        h.append(
            f"<p><b>On the paper's models ({esc(', '.join(c['models']))}): <span class='{cls(v)}'>{esc(v)}</span>."
            f"</b> {esc(r.verdict.reason)}</p><ul><li>Measured: {esc(r.measured)}</li>"
        )
        if v not in (REPRODUCED, NOT_APPLICABLE):
            h.append(f"<li>To measure it: <code>{esc(c['command'])}</code></li>")
        h.append("</ul>")
        ev = e.verdict.verdict
        h.append(
            f"<p><b>On the embedded models: <span class='{cls(ev)}'>{esc(ev)}</span>.</b> {esc(e.verdict.reason)}</p>"
        )
        items = [f"<li>Tested as: {esc(e.statement)}</li>"] if e.statement and e.statement != "—" else []
        items += [
            f"<li class='{'tie' if o.tie else 'holds' if o.holds else 'fails'}'>{o.word}: "
            f"{esc(o.text.rsplit(': ', 1)[0])}</li>"
            for o in e.outcomes
        ]
        if items:
            h.append("<ul>" + "".join(items) + "</ul>")
        h += fig_html(e.figure)
    if notes:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    h.append("</body></html>")
    page.write_text("\n".join(h))
    return [md, page]
