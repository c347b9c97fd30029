"""Tables from stored results: per cell (model x sampler x steps x solver) statistics over seeds, and
steps-to-converge recounted under another stopping threshold without re-running.

Statistics: `_mean` is the mean over seeds, `_std` the sample standard deviation over seeds (ddof = 1; NaN
with one seed). Speedups are per seed first, then averaged:
    speedup_steps = T / iterations           (sequential sampling takes exactly T parallel steps)
    speedup_time  = wall_s(sequential, same model/sampler/steps/seed) / wall_s(solver)
The sequential reference for time is the stored sequential run of the same seed at the lowest world size.

Recounting (`recount_steps`) is an ESTIMATE of what the solver would have done under another threshold:
the stored iterates were produced with the stored threshold, which decided which states were frozen and
which steps the acceleration touched. The rule ("the first iteration after which every step of the
trajectory has been seen converged"):
  - a step counts as converged from the iteration where its logged rho is <= the new threshold and stays so
    in every later iteration that logs it; a state no longer logged (frozen) keeps its last status;
  - a pass counts only when every step logged above it in that iteration passes too (it is above the new
    u*, the highest failing step): the solver updates everything at or below u* during the iteration, so a
    pass there is stale (this is the solver's own rule, and what makes the recount exact, see below);
  - the step the stored safeguard finalised (the highest stored-unconverged step of its last logged
    iteration) took the exact sequential update, which leaves no residual: it counts as converged after
    that iteration under any threshold.
  - steps = (that iteration) + 1; NaN and `censored` when some step never counts as converged.
Exactness: under the stored threshold the recount equals the stored count (tested on real solver logs).
Under a looser threshold it is an estimate (exact for the steps frozen by the safeguard; the real solver
would have frozen other states earlier and its later iterates would differ). Under a tighter threshold a
solve is censored whenever a frozen state's last logged rho fails it: the run never logged what follows.
Picard logs the first-order rho but stops on its own rule (ParaDiGMS), and the summed-residual rule accepts
steps by their sum (docs/METHOD.md section 9): neither is recounted (`first_order_tags` tells them apart).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from parataa.solver_config import SolverConfig
from parataa.stopping import RULES, TOL_SCALES, step_threshold

__all__ = [
    "Threshold",
    "authors_rule",
    "paper_rule",
    "flat_rule",
    "parse_threshold",
    "with_step_scales",
    "recount_steps",
    "first_order_tags",
    "summary_table",
    "recount_table",
    "window_table",
    "grid_table",
    "write_table",
    "to_markdown",
    "to_latex",
]

GROUP = ["model", "sampler", "steps", "solver", "solver_tag"]
ThresholdFn = Callable[[pd.DataFrame], np.ndarray]


# ------------------------------------------------------------------------------------------ thresholds


@dataclass(frozen=True)
class Threshold:
    """A named stopping threshold: fn(convergence rows) -> threshold per row."""

    label: str
    description: str
    fn: ThresholdFn

    def __call__(self, df: pd.DataFrame) -> np.ndarray:
        return self.fn(df)


def _g(df: pd.DataFrame, g: str) -> np.ndarray:
    col = {"sigma": "sigma", "beta": "beta_scale", "one": None}.get(g, "missing")
    if col == "missing":
        raise ValueError(f"g must be one of 'sigma', 'beta', 'one', got {g!r}")
    if col is None:
        return np.ones(len(df))
    if col not in df.columns or df[col].isna().any():
        raise ValueError(
            f"threshold with g={g!r} needs the per-step column {col!r}: attach it with "
            "with_step_scales(convergence, study.step_scales); it comes from config.schedule.alpha_in/alpha_out "
            "in each run's manifest.json"
        )
    return df[col].to_numpy(float)


def _check_g(g: str) -> None:
    if g not in TOL_SCALES:
        raise ValueError(f"g must be one of {TOL_SCALES}, got {g!r}")


def authors_rule(abs_tol: float = 1e-3, rel_tol: float = 1e-3, g: str = "sigma") -> Threshold:
    """The authors' code: rho_t <= max(abs_tol, rel_tol * g_t), g = posterior std sigma_t."""
    _check_g(g)
    label = "authors" if (abs_tol, rel_tol, g) == (1e-3, 1e-3, "sigma") else f"authors_a{abs_tol:g}_r{rel_tol:g}_{g}"
    # sigma_t and sqrt(beta_t) never exceed 1, so with rel_tol <= abs_tol the rule is a flat abs_tol
    flat = rel_tol <= abs_tol and g in ("sigma", "beta", "one")
    return Threshold(
        label,
        f"rho_t <= max({abs_tol:g}, {rel_tol:g} * g_t), g = {g} (authors' code rule)",
        lambda df: np.full(len(df), float(abs_tol)) if flat else step_threshold(abs_tol, rel_tol, _g(df, g)),
    )


def paper_rule(tau: float = 1e-3, g: str = "sigma") -> Threshold:
    """The paper's text: eps_t = tau^2 g(t)^2 d, i.e. rho_t <= tau * g(t)."""
    _check_g(g)
    label = f"paper_{g}" if tau == 1e-3 else f"paper_tau{tau:g}_{g}"
    return Threshold(label, f"rho_t <= {tau:g} * g(t), g = {g} (paper text rule)", lambda df: tau * _g(df, g))


def flat_rule(tol: float) -> Threshold:
    return Threshold(f"flat_{tol:g}", f"rho_t <= {tol:g}", lambda df: np.full(len(df), float(tol)))


def parse_threshold(spec: str) -> Threshold:
    """'authors', 'authors:abs=1e-3,rel=1e-3,g=sigma', 'paper', 'paper:tau=1e-3,g=beta', 'flat:1e-4'."""
    name, _, rest = spec.partition(":")
    opts: dict[str, str] = {}
    if name == "flat":
        try:
            return flat_rule(float(rest))
        except ValueError as e:
            raise ValueError(f"threshold 'flat:<tol>' needs a number, got {spec!r}") from e
    for part in filter(None, rest.split(",")):
        k, eq, v = part.partition("=")
        if not eq:
            raise ValueError(f"threshold options are key=value, got {part!r} in {spec!r}")
        opts[k.strip()] = v.strip()
    try:
        if name == "authors":
            allowed = {"abs", "rel", "g"}
            _unknown(opts, allowed, spec)
            return authors_rule(float(opts.get("abs", 1e-3)), float(opts.get("rel", 1e-3)), opts.get("g", "sigma"))
        if name == "paper":
            _unknown(opts, {"tau", "g"}, spec)
            return paper_rule(float(opts.get("tau", 1e-3)), opts.get("g", "sigma"))
    except ValueError as e:
        raise ValueError(f"bad threshold {spec!r}: {e}") from e
    raise ValueError(f"threshold must be 'authors[:abs=,rel=,g=]', 'paper[:tau=,g=]' or 'flat:<tol>', got {spec!r}")


def _unknown(opts: dict[str, str], allowed: set[str], spec: str) -> None:
    bad = sorted(set(opts) - allowed)
    if bad:
        raise ValueError(f"unknown option(s) {bad} in {spec!r}; allowed {sorted(allowed)}")


def with_step_scales(convergence: pd.DataFrame, scales: pd.DataFrame) -> pd.DataFrame:
    """Attach sigma_t and sqrt(beta_t) of each row's step, from the row's own run when both tables name runs
    (Study.step_scales does), else from the row's (model, sampler, steps)."""
    if scales.empty:
        return convergence
    keys = [k for k in ("run", "model", "sampler", "steps", "step") if k in convergence.columns and k in scales]
    if "run" not in keys and "run" in scales.columns:
        scales = scales.drop(columns="run").drop_duplicates()
        if scales.duplicated(keys).any():
            raise ValueError("runs of one (model, sampler, steps) have different schedules: attach scales by run")
    out = convergence.drop(columns=[c for c in ("sigma", "beta_scale") if c in convergence.columns])
    return out.merge(scales, on=keys, how="left")


# -------------------------------------------------------------------------------------------- recount


def first_order_tags(conv: pd.DataFrame, settings: pd.DataFrame | None = None) -> tuple[set[str], set[str]]:
    """(tags of runs that stop on each step's first-order residual, the others). From the runs' solver settings
    (Study.solver_settings: method, stop) when given: Picard stops on its own change-based rule, a rule that is not
    `recountable` (parataa/stopping.py; stop="sum", the summed residual, docs/METHOD.md section 9) on another.
    Without settings, from the logs: a run on the per-step rule never accepts a step whose rho_t exceeds its
    threshold."""
    tags = {str(t) for t in conv["solver_tag"].unique()}
    if settings is not None and {"solver_tag", "method", "stop"} <= set(settings.columns):
        s = settings[settings["solver_tag"].astype(str).isin(tags)]
        per_step = s["stop"].fillna("step").map(lambda r: RULES[r].recountable if r in RULES else False)
        other = set(s.loc[(s["method"] == "picard") | ~per_step.astype(bool), "solver_tag"].astype(str))
    else:
        bad = conv["converged"].to_numpy(bool) & (conv["rho"].to_numpy(float) > conv["threshold"].to_numpy(float))
        other = {str(t) for t in conv.loc[bad, "solver_tag"].unique()}
        if "solver" in conv.columns:
            other |= {str(t) for t in conv.loc[conv["solver"] == "picard", "solver_tag"].unique()}
    return tags - other, other


def recount_steps(
    convergence_df: pd.DataFrame, threshold_fn: ThresholdFn, settings: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Steps to converge of every logged solve under a new threshold (see the module docstring).

    convergence_df: rows of convergence.parquet (sample or seed, iteration, step, rho, converged, and the
    identifying columns present). threshold_fn(rows) -> new threshold per row.
    Returns one row per solve: its identifying columns, `iterations` (the recount; NaN when censored),
    `censored` (a step never meets the new threshold in the logged iterations), `recounted` (False for
    runs whose stopping rule is not the per-step first-order one: Picard, the summed-residual rule;
    `first_order_tags`, from `settings` = Study.solver_settings when given).
    """
    need = {"iteration", "step", "rho", "converged"}
    if not need <= set(convergence_df.columns):
        raise ValueError(f"convergence rows need columns {sorted(need)}, have {sorted(convergence_df.columns)}")
    id_cols = [c for c in ("model", "sampler", "steps", "solver", "solver_tag") if c in convergence_df.columns]
    id_cols.append("seed" if "seed" in convergence_df.columns else "sample")
    df = convergence_df.sort_values([*id_cols, "step", "iteration"]).reset_index(drop=True)
    other_rule = first_order_tags(df, settings)[1] if {"solver_tag", "threshold"} <= set(df.columns) else set()
    thr = np.asarray(threshold_fn(df), dtype=float)
    if thr.shape != (len(df),):
        raise ValueError(f"threshold_fn must return one threshold per row ({len(df)}), got shape {thr.shape}")
    ok = df["rho"].to_numpy(float) <= thr
    # u* under the new threshold: the highest logged step of the iteration that fails it. A check of step t
    # is final only when t is above u* (the solver keeps and freezes those; everything at or below u* is
    # updated during the iteration, so a pass there is stale).
    u_new = df.assign(_u=np.where(ok, -1, df["step"])).groupby([*id_cols, "iteration"])["_u"].transform("max")
    verified = df["step"].to_numpy() > u_new.to_numpy()
    # the safeguard's step: highest stored-unconverged step of an iteration, never logged again. Its exact
    # update leaves no residual: converged after that iteration (not before: its rho there failed).
    last_it = df.groupby([*id_cols, "step"])["iteration"].transform("max").to_numpy()
    unconv = ~df["converged"].to_numpy(bool)
    top = df.assign(_u=np.where(unconv, df["step"], -1)).groupby([*id_cols, "iteration"])["_u"].transform("max")
    safeguard = unconv & (df["step"].to_numpy() == top.to_numpy()) & (df["iteration"].to_numpy() == last_it)
    barrier = safeguard & ~verified
    df["_ok"] = (verified | safeguard).astype(np.int8)
    # converged from the first row of the final all-ok run of each step's rows (frozen: last status kept)
    df["_suffix_ok"] = df.iloc[::-1].groupby([*id_cols, "step"])["_ok"].cummin().iloc[::-1]
    run_start = df[df["_suffix_ok"] == 1].groupby([*id_cols, "step"])["iteration"].min()
    at_barrier = df[barrier].groupby([*id_cols, "step"])["iteration"].max()
    conv_from = run_start.combine(at_barrier, max, fill_value=-1).loc[run_start.index]

    rows = []
    for key, grp in df.groupby(id_cols, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rec = dict(zip(id_cols, key, strict=True))
        T = int(rec["steps"]) if "steps" in rec else int(grp["step"].max()) + 1
        if rec.get("solver") == "picard" or rec.get("solver_tag") in other_rule:
            rows.append({**rec, "iterations": math.nan, "censored": False, "recounted": False})
            continue
        try:
            cf = conv_from.loc[key]
        except KeyError:
            cf = pd.Series(dtype=float)
        complete = len(cf) == T and set(cf.index) == set(range(T))
        rows.append(
            {
                **rec,
                "iterations": float(cf.max() + 1) if complete else math.nan,
                "censored": not complete,
                "recounted": True,
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ tables


def per_seed(samples: pd.DataFrame) -> pd.DataFrame:
    """samples plus speedup_steps = steps / iterations and speedup_time = sequential wall_s of the same seed
    (lowest world size) / wall_s, per seed."""
    s = samples.copy()
    s["speedup_steps"] = s["steps"] / s["iterations"]
    seq = s[s["solver"] == "sequential"]
    if not seq.empty:
        seq = seq.sort_values("world_size").drop_duplicates(["model", "sampler", "steps", "seed"])
        ref = seq.set_index(["model", "sampler", "steps", "seed"])["wall_s"].rename("seq_wall_s")
        s = s.join(ref, on=["model", "sampler", "steps", "seed"])
    else:
        s["seq_wall_s"] = np.nan
    s["speedup_time"] = s["seq_wall_s"] / s["wall_s"]
    return s


def _agg(df: pd.DataFrame, by: list[str], cols: Sequence[str]) -> pd.DataFrame:
    g = df.groupby(by, sort=True, dropna=False)
    out = g.size().rename("n_seeds").to_frame()
    for c in cols:
        if c in df.columns:
            out[f"{c}_mean"] = g[c].mean()
            out[f"{c}_std"] = g[c].std(ddof=1)
    return out


SUMMARY_CAPTION = (
    "Per cell: mean and sample std over seeds. Wall-clock time is measured per shard (the samples of a shard "
    "are solved in one batch, so each gets the shard's time divided evenly): wall_s_mean is the mean time per "
    "sample, speedup_time_mean the sequential time of the same seeds over it, and their spread "
    "(*_shard_std) is the std over shards, empty with one shard per cell. speedup_steps = steps / iterations "
    "at the solver's own stop; the rule-free comparison is the yardstick table."
)


def summary_table(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per model x sampler x steps x solver (tag): mean and spread over seeds.

    Wall-clock columns: a shard's samples share one batched solve whose time is split evenly, so a spread over
    seeds would be zero by construction; the spread is taken over shards instead (n_shards, *_shard_std; NaN
    with a single shard)."""
    if samples.empty:
        return pd.DataFrame(columns=[*GROUP, "n_seeds"])
    s = per_seed(samples)
    if "run" not in s.columns:
        s = s.assign(run=s.groupby(GROUP, dropna=False).ngroup().astype(str))
    out = _agg(s, GROUP, ["iterations", "nfe", "speedup_steps", "err_max", "psnr"])
    g = s.groupby(GROUP, sort=True, dropna=False)
    out["finished_frac"] = g["finished"].mean()
    out["err_max_max"] = g["err_max"].max()
    out["world_size"] = g["world_size"].max()
    shards = s.groupby([*GROUP, "run"], sort=True, dropna=False)[["wall_s", "speedup_time"]].mean()
    sg = shards.groupby(level=GROUP, sort=True, dropna=False)
    out["n_shards"] = sg.size()
    out["wall_s_mean"] = g["wall_s"].mean()
    out["wall_s_shard_std"] = sg["wall_s"].std(ddof=1)
    out["speedup_time_mean"] = sg["speedup_time"].mean()
    out["speedup_time_shard_std"] = sg["speedup_time"].std(ddof=1)
    cols = [
        "n_seeds",
        "finished_frac",
        "iterations_mean",
        "iterations_std",
        "nfe_mean",
        "nfe_std",
        "speedup_steps_mean",
        "speedup_steps_std",
        "n_shards",
        "wall_s_mean",
        "wall_s_shard_std",
        "speedup_time_mean",
        "speedup_time_shard_std",
        "err_max_mean",
        "err_max_max",
        "psnr_mean",
        "psnr_std",
        "world_size",
    ]
    return out[cols].reset_index()


RECOUNT_CAPTION = (
    "Parallel steps recounted from the stored residuals under other thresholds (an estimate; see "
    "analysis/tables.py). <rule>_censored counts the seeds whose logs never show every step passing the rule "
    "(a tighter rule than the solver stopped on): their count is unknown, so <rule>_mean and _std are left "
    "empty in any cell with a censored seed rather than averaged over the others."
)


def recount_table(
    samples: pd.DataFrame,
    convergence: pd.DataFrame,
    thresholds: Iterable[Threshold],
    settings: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Per cell: stored iterations and the recount under each threshold: mean and std over seeds (NaN when any
    seed is censored), censored seeds out of n_seeds."""
    notes: list[str] = []
    g0 = samples.groupby(GROUP, sort=True)["iterations"]
    base = pd.DataFrame({"n_seeds": g0.size(), "stored_mean": g0.mean(), "stored_std": g0.std(ddof=1)})
    tables = [base]
    for th in thresholds:
        try:
            rc = recount_steps(convergence, th, settings)
        except ValueError as e:
            notes.append(f"recount under {th.label} skipped: {e}")
            continue
        rc = rc[rc["recounted"]]
        g = rc.groupby(GROUP, sort=True)
        cens = g["censored"].sum().astype(int)
        t = pd.DataFrame(
            {
                f"{th.label}_mean": g["iterations"].mean().where(cens == 0),
                f"{th.label}_std": g["iterations"].std(ddof=1).where(cens == 0),
                f"{th.label}_censored": cens,
            }
        )
        tables.append(t)
        n_cells, n_cens = len(cens), int((cens > 0).sum())
        notes.append(
            f"{th.label}: {th.description}"
            + (f"; {n_cens} of {n_cells} recounted cells have censored seeds (mean left empty)" if n_cens else "")
        )
    out = pd.concat(tables, axis=1).reset_index()
    for c in out.columns:
        if c.endswith("_censored"):
            out[c] = out[c].astype("Int64")
    return out, notes


def setting_keys(columns: Iterable[str], vary: Sequence[str] = ()) -> list[str]:
    """The columns that name one solver setting (the variant label and every SolverConfig field) among `columns`,
    except those in `vary`: what stays fixed along a study of `vary` (a window or m x k study)."""
    cols = set(columns)
    return [c for c in ("variant", *SolverConfig.field_names()) if c in cols and c not in vary]


def _hyper_key(s: pd.DataFrame, vary: Sequence[str]) -> list[str]:
    return ["model", "sampler", "steps", "solver", *setting_keys(s.columns, vary)]


YARD_COLS = ["its_stop_mean", "to_40db_mean", "n_censored_40db", "n_measured", "nfe_mean"]


def _study_slice(st: pd.DataFrame, vary: Sequence[str], method: str | None = None) -> pd.DataFrame:
    """Settings (analysis.yardstick.settings) that differ from others only in the `vary` columns."""
    s = st[st["solver"] != "sequential"] if "solver" in st.columns else st
    if method is not None:
        s = s[s["method"] == method] if "method" in s.columns else s.iloc[:0]
    if s.empty or not set(vary) <= set(s.columns):
        return pd.DataFrame()
    key = _hyper_key(s, vary)
    sizes = s.groupby(key, dropna=False)[list(vary)].transform("nunique")
    s = s[(sizes > 1).any(axis=1)]
    if s.empty:
        return pd.DataFrame()
    cols = [c for c in (*key, *vary, "solver_tag", "n_seeds", *YARD_COLS) if c in s.columns]
    return s.sort_values([*key, *vary])[cols].reset_index(drop=True)


def window_table(st: pd.DataFrame) -> pd.DataFrame:
    """Per setting stored at several windows W (others fixed): steps at the stop and to 40 dB vs W."""
    return _study_slice(st, ["window"])


def grid_table(st: pd.DataFrame, method: str = "taa") -> pd.DataFrame:
    """`method`'s settings over the history m x order k grid (others fixed): steps at the stop and to 40 dB."""
    return _study_slice(st, ["history", "order"], method)


# ----------------------------------------------------------------------------------------------- writers


def _fmt(v: object) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1000 or a < 1e-3:
            return f"{v:.3g}"
        if a >= 100:
            return f"{v:.1f}"
        return f"{v:.3g}" if a < 1 else f"{v:.2f}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
}


def _tex(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^–]", lambda m: _TEX[m.group()], text)


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    cols = list(df.columns)
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in cols)
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    out.append(" & ".join(_tex(c) for c in cols) + r" \\")
    out.append(r"\midrule")
    for row in df.itertuples(index=False):
        out.append(" & ".join(_tex(_fmt(v)) for v in row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(rf"\caption{{{_tex(caption)}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def write_table(
    df: pd.DataFrame, out_dir: str | Path, name: str, caption: str = "", display: pd.DataFrame | None = None
) -> list[Path]:
    """name.csv (full precision), name.md and name.tex (rounded for reading, or `display`: the same table
    already written out as text). Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md", out_dir / f"{name}.tex"]
    df.to_csv(paths[0], index=False)
    shown = df if display is None else display
    paths[1].write_text((f"{caption}\n\n" if caption else "") + to_markdown(shown))
    paths[2].write_text(to_latex(shown, caption))
    return paths
