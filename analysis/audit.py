"""Audit of the paper's claims (analysis/paper_claims.yaml) against stored results.

For every claim: the measured value, a verdict (reproduced / not reproduced / not measurable here, with the
reason and the exact command that would measure it), shape evidence from the embedded and analytic models
where the claim is about real models, and the evidence figure. Written as Markdown and as one self-contained
HTML page (figures embedded as base64 PNG).

`decide` (the verdict) is a pure function of the claim's measure spec and the measured values.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .tables import per_seed

__all__ = [
    "REPRODUCED",
    "NOT_REPRODUCED",
    "NOT_MEASURABLE",
    "CLAIMS_PATH",
    "Verdict",
    "ClaimResult",
    "load_claims",
    "decide",
    "measure",
    "audit",
    "write_report",
]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_MEASURABLE = "not measurable here"
CLAIMS_PATH = Path(__file__).with_name("paper_claims.yaml")
KINDS = ("range", "at_most", "at_least", "sequence", "fewer_than", "ordering", "setting", "study")
GROUP = ["model", "sampler", "steps"]


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str


@dataclass
class ClaimResult:
    claim: dict[str, Any]
    verdict: Verdict
    measured: str
    shape: str = ""
    figure: Path | None = None
    details: list[str] = field(default_factory=list)


def load_claims(path: str | Path = CLAIMS_PATH) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ValueError(f"{path}: expected a mapping with a 'claims' list")
    ids = set()
    for c in data["claims"]:
        for key in ("id", "claim", "source", "setting", "models", "measure", "command"):
            if key not in c:
                raise ValueError(f"{path}: claim {c.get('id', '?')!r} lacks {key!r}")
        if c["id"] in ids:
            raise ValueError(f"{path}: duplicate claim id {c['id']!r}")
        ids.add(c["id"])
        kind = c["measure"].get("kind")
        if kind not in KINDS:
            raise ValueError(f"{path}: claim {c['id']!r} measure.kind must be one of {KINDS}, got {kind!r}")
    return data


# --------------------------------------------------------------------------------------------- verdict


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def decide(spec: Mapping[str, Any], values: Any) -> Verdict:
    """The verdict of one claim from its measure spec and the measured values (pure: no I/O, no data).

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


# -------------------------------------------------------------------------------------------- measuring


def _norm(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _select(s: pd.DataFrame, select: Mapping[str, Any]) -> pd.DataFrame:
    for col, want in select.items():
        if col not in s.columns:
            return s.iloc[:0]
        wants = want if isinstance(want, list) else [want]
        if pd.api.types.is_numeric_dtype(s[col]):
            s = s[np.isclose(s[col].to_numpy(float)[:, None], np.asarray(wants, float)[None, :]).any(axis=1)]
        else:
            s = s[s[col].astype(str).isin([str(w) for w in wants])]
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


def _values(spec: Mapping[str, Any], s: pd.DataFrame, select: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """Measured values for `decide` and one human-readable line per group / cell."""
    kind, metric = spec["kind"], spec["metric"]
    higher = metric.startswith("speedup") or metric == "psnr"
    sel = _select(s, select)
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


def measure(claim: Mapping[str, Any], samples: pd.DataFrame) -> tuple[Verdict, str, str]:
    """(verdict, measured text, shape-evidence text) of one claim on the stored samples."""
    spec = claim["measure"]
    if spec["kind"] in ("setting", "study"):
        return decide(spec, None), "—", ""
    if samples.empty:
        return Verdict(NOT_MEASURABLE, "no verified results were loaded"), "—", ""
    s = per_seed(samples)
    models = {_norm(m) for m in claim["models"]}
    is_claim_model = s["model"].map(lambda m: _norm(m) in models)
    values, lines = _values(spec, s[is_claim_model], spec.get("select", {}))
    verdict = decide(spec, values)
    if verdict.verdict == NOT_MEASURABLE:
        present = sorted(set(samples["model"]))
        if is_claim_model.any():  # the model is there, the setting (steps, cfg, solver options...) is not
            why = f"the stored results of {sorted(set(s.loc[is_claim_model, 'model']))} have no runs with " + (
                f"{dict(spec.get('select', {}))}"
            )
        else:
            why = f"the claim is about {list(claim['models'])}, the stored results have models {present}"
        verdict = Verdict(NOT_MEASURABLE, f"{verdict.reason}: {why}" + (f" ({lines[0]})" if lines else ""))
    measured = "; ".join(lines) if lines else "—"
    shape = ""
    if claim.get("real_models", True):
        others = s[~is_claim_model]
        if not others.empty:
            sel = spec.get("shape_select", {k: v for k, v in spec.get("select", {}).items() if k != "model"})
            _, slines = _values({**spec, "kind": "range" if spec["kind"] == "sequence" else spec["kind"]}, others, sel)
            if slines:
                shape = "; ".join(slines)
    return verdict, measured, shape


def audit(
    samples: pd.DataFrame,
    figures: Mapping[str, Sequence[Path]] | None = None,
    claims_path: str | Path = CLAIMS_PATH,
) -> tuple[list[ClaimResult], dict[str, Any]]:
    data = load_claims(claims_path)
    figures = figures or {}
    results = []
    for c in data["claims"]:
        verdict, measured, shape = measure(c, samples)
        fig = None
        for p in figures.get(c.get("figure", ""), []):
            if str(p).endswith(".png"):
                fig = Path(p)
                break
        results.append(ClaimResult(c, verdict, measured, shape, fig))
    return results, data


# -------------------------------------------------------------------------------------------- reporting


def _command(r: ClaimResult) -> str:
    return r.claim["command"] if r.verdict.verdict != REPRODUCED else ""


def write_report(
    results: list[ClaimResult],
    data: Mapping[str, Any],
    out_dir: str | Path,
    context: Mapping[str, Any],
    notes: Sequence[str] = (),
) -> list[Path]:
    """audit.md and audit.html (self-contained) in out_dir. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "audit.md"
    page = out / "audit.html"
    counts = {v: sum(r.verdict.verdict == v for r in results) for v in (REPRODUCED, NOT_REPRODUCED, NOT_MEASURABLE)}

    lines = ["# Audit of the paper's claims", ""]
    for k, v in context.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", f"> {data.get('real_model_note', '').strip()}", ""]
    lines.append("Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    lines += ["", "| claim | source | verdict | measured |", "|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.claim['id']} | {r.claim['source']} | **{r.verdict.verdict}** | {r.measured.replace('|', '/')} |"
        )
    for r in results:
        c = r.claim
        lines += [
            "",
            f"## {c['id']}: {r.verdict.verdict}",
            "",
            f"**Claim.** {c['claim'].strip()}",
            "",
            f"- Source: {c['source']}",
            f"- Setting: {str(c['setting']).strip()}",
            f"- Measured: {r.measured}",
            f"- Verdict: **{r.verdict.verdict}**: {r.verdict.reason}",
        ]
        if c.get("note"):
            lines.append(f"- Note: {str(c['note']).strip()}")
        if r.shape:
            lines.append(
                f"- Shape evidence (embedded/analytic models; NOT evidence for the real-model claim): {r.shape}"
            )
        if _command(r):
            lines.append(f"- To measure on a cluster: `{_command(r)}`")
        if r.figure is not None:
            rel = Path(r.figure)
            try:
                rel = rel.relative_to(out)
            except ValueError:
                pass
            lines.append(f"- Evidence figure: ![{c.get('figure')}]({rel})")
        elif c.get("figure"):
            lines.append(f"- Evidence figure `{c['figure']}`: not produced (its inputs are missing, see notes)")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    md.write_text("\n".join(lines) + "\n")

    e = html.escape
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
        ".reproduced{color:#0a6b0a}.not-reproduced{color:#a00}.not-measurable-here{color:#8a5a00}"
        ".note{background:#fff4d6;padding:8px;border-left:4px solid #e0a800}img{max-width:100%}"
        "code{background:#f2f2f2;padding:1px 4px}"
    )
    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ParaTAA audit</title><style>{css}</style>"
        "</head><body><h1>Audit of the paper's claims</h1><ul>"
    ]
    h += [f"<li><b>{e(str(k))}</b>: {e(str(v))}</li>" for k, v in context.items()]
    h.append(f"</ul><p class='note'>{e(str(data.get('real_model_note', '')).strip())}</p>")
    h.append("<p>Verdicts: " + ", ".join(f"{n} {e(v)}" for v, n in counts.items()) + "</p>")
    h.append("<table><tr><th>claim</th><th>source</th><th>verdict</th><th>measured</th></tr>")
    for r in results:
        cls = r.verdict.verdict.replace(" ", "-")
        h.append(
            f"<tr><td><a href='#{e(r.claim['id'])}'>{e(r.claim['id'])}</a></td><td>{e(r.claim['source'])}"
            f"</td><td class='{cls}'><b>{e(r.verdict.verdict)}</b></td><td>{e(r.measured)}</td></tr>"
        )
    h.append("</table>")
    for r in results:
        c = r.claim
        cls = r.verdict.verdict.replace(" ", "-")
        h.append(f"<h2 id='{e(c['id'])}'>{e(c['id'])}: <span class='{cls}'>{e(r.verdict.verdict)}</span></h2>")
        h.append(f"<p><b>Claim.</b> {e(c['claim'].strip())}</p><ul>")
        h.append(f"<li>Source: {e(c['source'])}</li><li>Setting: {e(str(c['setting']).strip())}</li>")
        h.append(f"<li>Measured: {e(r.measured)}</li>")
        h.append(f"<li>Verdict: <b class='{cls}'>{e(r.verdict.verdict)}</b>: {e(r.verdict.reason)}</li>")
        if c.get("note"):
            h.append(f"<li>Note: {e(str(c['note']).strip())}</li>")
        if r.shape:
            h.append(
                "<li>Shape evidence (embedded/analytic models; <b>not</b> evidence for the real-model claim): "
                f"{e(r.shape)}</li>"
            )
        if _command(r):
            h.append(f"<li>To measure on a cluster: <code>{e(_command(r))}</code></li>")
        h.append("</ul>")
        if r.figure is not None and Path(r.figure).is_file():
            b64 = base64.b64encode(Path(r.figure).read_bytes()).decode()
            h.append(
                f"<figure><img alt='{e(str(c.get('figure')))}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{e(str(c.get('figure')))}</figcaption></figure>"
            )
        elif c.get("figure"):
            h.append(
                f"<p><i>Evidence figure {e(c['figure'])}: not produced (its inputs are missing, see notes).</i></p>"
            )
    if notes:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    h.append("</body></html>")
    page.write_text("\n".join(h))
    return [md, page]
