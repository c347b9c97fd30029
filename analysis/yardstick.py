"""The study's rule-free yardstick: parallel steps until x0 is the sequential image (docs/METHOD.md section 9).

Solvers stop on different rules (section 4 for FP, AA and TAA, a change-based tolerance for Picard), so their
iteration counts at the stop do not compare them on equal terms. The yardstick does not depend on any rule:

    iterations to N dB = the first iteration (counted from 1) whose x0 is within PSNR N dB of the sequential x0
                         of the same seed, PSNR = 10 log10(2^2 / MSE) (states in [-1, 1])

read from each run's fidelity (`Study.fidelity`). A seed that never gets there before its solver stops is
*censored*: its count is unknown (larger than the stop), shown as such and never averaged. A seed without
fidelity rows (iterates kept for the first samples only, in older runs) is *not measured*.

Per seed (`per_seed`): iterations at the stop, to 30 / 40 / 50 dB, PSNR at the stop (from err_rms of
samples.parquet, the float64 x0: +inf when equal to the sequential x0). Per setting (`settings`): means, maxima,
censored and measured counts, speed-ups in steps (sequential steps / iterations). Per variant and cell
(`best_settings`): the setting with the fewest mean iterations to 40 dB (the paper chose m and k by grid
search), which the paper-style table and the figures show. `Yardstick.of(study)` builds the three once for a
whole analysis run (tables, figures and the audit read the same frames).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .labels import sampler_label, setting_label, solver_order, variant_label
from .loaders import Study, psnr_db

__all__ = [
    "DB_LEVELS",
    "iterations_to_db",
    "per_seed",
    "settings",
    "best_settings",
    "yardstick_table",
    "paper_table",
    "study_settings",
    "Yardstick",
]

DB_LEVELS = (30, 40, 50)
CELL3 = ["model", "sampler", "steps"]
SETTING = [*CELL3, "solver", "solver_tag"]


def iterations_to_db(fidelity: pd.DataFrame, db: float, column: str = "psnr_db") -> pd.Series:
    """Per (solver_tag cell, seed): the first iteration with `column` >= db; NaN where no row reaches it.

    `fidelity` rows: identifying columns, seed, iteration, and `column`. Index: the identifying columns + seed.
    """
    keys = [c for c in SETTING if c in fidelity.columns] + ["seed"]
    if fidelity.empty:
        return pd.Series(dtype=float, name=f"to_{db:g}db")
    hit = fidelity[fidelity[column].to_numpy(float) >= db]
    first = hit.groupby(keys)["iteration"].min().astype(float)
    index = fidelity.groupby(keys).size().index
    return first.reindex(index).rename(f"to_{db:g}db")


def per_seed(samples: pd.DataFrame, fidelity: pd.DataFrame, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per parallel (setting, seed): the samples.parquet columns plus

    psnr_stop_db          PSNR of the final x0 against the sequential x0 (data range 2; inf = identical)
    to_{30,40,50}db       iterations to that PSNR (NaN when censored or not measured)
    censored_{N}db        measured and never reached before the stop
    measured              the seed has fidelity rows
    variant, label        readable variant and setting names (analysis.labels)
    speedup_stop          steps / iterations at the stop (sequential sampling takes `steps` steps)
    speedup_time          wall_s of the sequential run of the same seed / wall_s

    `extra` (Study.solver_settings): solver options samples.parquet has no column for, merged by tag.
    """
    seq = samples[samples["solver"] == "sequential"]
    s = samples[samples["solver"] != "sequential"].copy()
    if not seq.empty and "wall_s" in s.columns:
        seq = seq.sort_values("world_size").drop_duplicates([*CELL3, "seed"])
        s = s.join(seq.set_index([*CELL3, "seed"])["wall_s"].rename("seq_wall_s"), on=[*CELL3, "seed"])
        s["speedup_time"] = s["seq_wall_s"] / s["wall_s"]
    if extra is not None and not extra.empty:
        add = [c for c in extra.columns if c not in s.columns]
        if add:
            s = s.merge(extra[[*CELL3, "solver_tag", *add]], on=[*CELL3, "solver_tag"], how="left")
    err = s["err_rms"].to_numpy(float) if "err_rms" in s.columns else np.full(len(s), np.nan)
    s["psnr_stop_db"] = psnr_db(err**2)
    keys = [*SETTING, "seed"]
    if not fidelity.empty:
        measured = fidelity.groupby(keys).size().rename("_n").reset_index()
        s = s.merge(measured, on=keys, how="left")
        s["measured"] = s["_n"].notna()
        s = s.drop(columns="_n")
        for db in DB_LEVELS:
            to = iterations_to_db(fidelity, db).reset_index()
            s = s.merge(to, on=keys, how="left")
    else:
        s["measured"] = False
        for db in DB_LEVELS:
            s[f"to_{db}db"] = np.nan
    for db in DB_LEVELS:
        s[f"censored_{db}db"] = s["measured"] & s[f"to_{db}db"].isna()
    s["variant"] = s["solver_tag"].map(variant_label)
    s["label"] = [setting_label(t, n) for t, n in zip(s["solver_tag"], s["steps"], strict=True)]
    s["speedup_stop"] = s["steps"] / s["iterations"]
    return s.reset_index(drop=True)


def _censored_mean(values: pd.Series, censored: pd.Series) -> float:
    """Mean over measured seeds; NaN when any of them is censored (its count is unknown) or none is measured."""
    if censored.any() or values.notna().sum() == 0:
        return math.nan
    return float(values.mean())


def settings(ps: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (model, sampler, steps, solver_tag): the yardstick over its seeds.

    its_stop_mean/max, to_{N}db_mean/max (NaN when a seed is censored), n_censored_{N}db, n_measured,
    psnr_stop_min_db, speedup_to_40db = steps / to_40db_mean, speedup_stop = steps / its_stop_mean, and
    `rank_40db` (to_40db_mean, +inf when censored: the ordering used to pick a variant's best setting).
    """
    rows = []
    per_seed_cols = {"seed", "condition", "run", "sample", "iterations", "nfe", "finished", "measured", "psnr_stop_db"}
    per_seed_cols |= {"wall_s", "model_s", "solver_s", "comm_s", "err_max", "err_rms", "psnr", "speedup_stop"}
    per_seed_cols |= {"seq_wall_s", "speedup_time"}
    per_seed_cols |= {f"{p}_{db}db" for db in DB_LEVELS for p in ("to", "censored")}
    for key, g in ps.groupby(SETTING, sort=True, dropna=False):
        rec = dict(zip(SETTING, key, strict=True))
        # the setting's own options (constant over its seeds): history, order, window, init, splitting, ...
        const = g.columns[(g.nunique(dropna=False) <= 1).to_numpy()]
        rec.update({c: g[c].iloc[0] for c in const if c not in rec and c not in per_seed_cols})
        rec["n_seeds"] = len(g)
        rec["n_measured"] = int(g["measured"].sum())
        rec["its_stop_mean"] = float(g["iterations"].mean())
        rec["its_stop_max"] = float(g["iterations"].max())
        rec["nfe_mean"] = float(g["nfe"].mean())
        for db in DB_LEVELS:
            v, c = g[f"to_{db}db"], g[f"censored_{db}db"]
            rec[f"to_{db}db_mean"] = _censored_mean(v, c)
            rec[f"to_{db}db_max"] = math.nan if c.any() or v.notna().sum() == 0 else float(v.max())
            rec[f"n_censored_{db}db"] = int(c.sum())
        rec["psnr_stop_min_db"] = float(g["psnr_stop_db"].min())
        rec["speedup_to_40db"] = int(rec["steps"]) / rec["to_40db_mean"]
        rec["speedup_stop"] = int(rec["steps"]) / rec["its_stop_mean"]
        rec["speedup_time"] = float(g["speedup_time"].mean()) if "speedup_time" in g else math.nan
        rec["rank_40db"] = (
            math.inf if rec["n_censored_40db"] else rec["to_40db_mean"] if rec["n_measured"] else math.nan
        )
        rows.append(rec)
    return pd.DataFrame(rows)


def best_settings(st: pd.DataFrame) -> pd.DataFrame:
    """Per (model, sampler, steps, variant): the setting with the fewest mean iterations to 40 dB (censored
    settings last; settings without fidelity ranked by iterations at the stop after the measured ones)."""
    if st.empty:
        return st
    order = st.assign(
        _r0=st["rank_40db"].isna().astype(int),
        _r1=st["rank_40db"].fillna(math.inf),
        _r2=st["its_stop_mean"],
    ).sort_values([*CELL3, "variant", "_r0", "_r1", "_r2", "solver_tag"])
    return order.drop_duplicates([*CELL3, "variant"]).drop(columns=["_r0", "_r1", "_r2"]).reset_index(drop=True)


YARDSTICK_COLUMNS = [
    *SETTING,
    "variant",
    "label",
    "n_seeds",
    "n_measured",
    "its_stop_mean",
    "its_stop_max",
    "to_30db_mean",
    "n_censored_30db",
    "to_40db_mean",
    "to_40db_max",
    "n_censored_40db",
    "to_50db_mean",
    "n_censored_50db",
    "psnr_stop_min_db",
    "speedup_to_40db",
    "speedup_stop",
]


def yardstick_table(st: pd.DataFrame) -> pd.DataFrame:
    """Every setting of the study with its yardstick (CSV keeps NaN for censored or unmeasured means)."""
    if st.empty:
        return pd.DataFrame(columns=YARDSTICK_COLUMNS)
    st = st.copy()
    st["_o"] = st["variant"].map({v: i for i, v in enumerate(solver_order(st["variant"]))})
    return st.sort_values([*CELL3, "_o", "solver_tag"])[YARDSTICK_COLUMNS].reset_index(drop=True)


def _num(v: float, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if math.isinf(v):
        return "exact" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def _steps_cell(mean: float, mx: float, n_cens: int, n_meas: int) -> str:
    if n_meas == 0:
        return "not measured"
    if n_cens:
        return f"never in {n_cens} of {n_meas} seeds"
    return f"{_num(mean)} / {_num(mx, 0)}"


def paper_table(st: pd.DataFrame, order: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper-style table: per model x sampler x steps, the sequential steps and, for each solver variant's
    best setting, steps at the stop and to 40 dB (mean / max over seeds), the lowest PSNR at the stop over
    seeds, and the speed-ups in steps. Returns (numbers for CSV, strings for Markdown / LaTeX)."""
    best = best_settings(st)
    if best.empty:
        cols = ["model", "sampler-steps", "sequential steps", "solver", "setting"]
        return best, pd.DataFrame(columns=cols)
    labels = order or solver_order(best["variant"])
    best = best.assign(_o=best["variant"].map({v: i for i, v in enumerate(labels)}))
    best = best.sort_values([*CELL3, "_o"]).drop(columns="_o").reset_index(drop=True)
    numbers = best[[c for c in YARDSTICK_COLUMNS if c in best.columns]].copy()
    numbers.insert(3, "sequential_steps", best["steps"].astype(int))
    text = pd.DataFrame(
        {
            "model": best["model"],
            "sampler-steps": [f"{sampler_label(s)}-{n}" for s, n in zip(best["sampler"], best["steps"], strict=True)],
            "sequential steps": best["steps"].astype(int).astype(str),
            "solver": best["variant"],
            "setting": [
                lab[len(v) :].strip() if lab.startswith(v) else lab
                for lab, v in zip(best["label"], best["variant"], strict=True)
            ],
            "steps at stop (mean / max)": [
                f"{_num(a)} / {_num(b, 0)}" for a, b in zip(best["its_stop_mean"], best["its_stop_max"], strict=True)
            ],
            "steps to 40 dB (mean / max)": [
                _steps_cell(a, b, c, n)
                for a, b, c, n in zip(
                    best["to_40db_mean"], best["to_40db_max"], best["n_censored_40db"], best["n_measured"], strict=True
                )
            ],
            "PSNR at stop, min (dB)": [_num(v) for v in best["psnr_stop_min_db"]],
            "speed-up to 40 dB": [_num(v, 2) + ("x" if np.isfinite(v) else "") for v in best["speedup_to_40db"]],
            "speed-up at stop": [_num(v, 2) + ("x" if np.isfinite(v) else "") for v in best["speedup_stop"]],
        }
    )
    return numbers, text


@dataclass(frozen=True)
class Yardstick:
    """The yardstick frames of a loaded study: per seed, per setting, and the best setting of each variant per
    cell; built once per analysis run."""

    per_seed: pd.DataFrame
    settings: pd.DataFrame
    best: pd.DataFrame

    @classmethod
    def of(cls, study: Study) -> Yardstick:
        ps = per_seed(study.samples, study.fidelity, study.solver_settings)
        st = settings(ps)
        return cls(ps, st, best_settings(st))


def study_settings(study: Study) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per seed, per setting) yardstick frames of a loaded study."""
    ys = Yardstick.of(study)
    return ys.per_seed, ys.settings
