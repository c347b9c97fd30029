"""Figures from stored results (PNG + PDF), each one meant to be looked at rather than read.

Solvers are named by `analysis.labels` (readable variants, not raw tags) and keep one colour in every figure of
a study; figures with several panels carry one shared legend. Where a solver was run at several settings, a
figure shows each variant's best setting in each cell (fewest mean steps to 40 dB, analysis.yardstick), except
the window and m x k figures, which are about the settings. Every function returns the paths it wrote; when its
inputs are missing it writes nothing, returns [] and says why (logged, and appended to `notes` when given).
`all_figures` also writes `index.json` in the figures folder: per figure, its files or the reason it was not
made, which the audit links to or quotes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .labels import palette, sampler_label, solver_order  # noqa: E402
from .loaders import Study  # noqa: E402
from .tables import first_order_tags, grid_table, setting_keys, window_table  # noqa: E402
from .yardstick import Yardstick  # noqa: E402

__all__ = [
    "FIGURES",
    "INDEX",
    "Frames",
    "steps_to_sequential",
    "fidelity_vs_iteration",
    "residual_vs_iteration",
    "window_study",
    "window_ticks",
    "median_over_seeds",
    "residual_ratio",
    "history_order_grid",
    "speedup_vs_gpus",
    "iterate_grids",
    "all_figures",
    "read_index",
    "first_order_tags",
]

log = logging.getLogger("analysis")
CELL3 = ["model", "sampler", "steps"]
INDEX = "index.json"
PSNR_CAP = 120.0  # dB; float32 iterates identical to the reference read as +inf, drawn at the cap
LEVEL_DB = 40.0


class Frames:
    """The yardstick frames of a study, computed once for every figure: per seed, per setting, the best
    setting of each variant per cell, and one colour per variant."""

    def __init__(self, study: Study, yardstick: Yardstick | None = None) -> None:
        ys = yardstick or Yardstick.of(study)
        self.study = study
        self.per_seed, self.settings, self.best = ys.per_seed, ys.settings, ys.best
        self.colours = palette(self.settings["variant"]) if not self.settings.empty else {}

    def order(self, labels: Sequence[str]) -> list[str]:
        return solver_order(labels)


def _frames(study: Study | Frames) -> Frames:
    return study if isinstance(study, Frames) else Frames(study)


def _note(notes: list[str] | None, msg: str) -> list[Path]:
    log.warning(msg)
    if notes is not None:
        notes.append(msg)
    return []


def _save(fig: plt.Figure, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _facets(n: int, width: float = 5.0, height: float = 3.6, cols: int = 3) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = max(1, min(n, cols))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _title(key: Sequence[object]) -> str:
    model, sampler, steps = key[:3]
    return f"{model} {sampler_label(sampler)}-{steps}"


def _legend(fig: plt.Figure, handles: list, title: str | None = None) -> None:
    """One legend for the whole figure, below the panels."""
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 4),
            fontsize=9,
            title=title,
            frameon=False,
        )


def _solver_handles(fr: Frames, variants: Sequence[str], **kw) -> list[Line2D]:
    style = {"marker": "o", "lw": 2, **kw}
    return [Line2D([], [], color=fr.colours.get(v, "k"), label=v, **style) for v in fr.order(variants)]


def _best_keys(fr: Frames) -> set[tuple]:
    return set(map(tuple, fr.best[[*CELL3, "solver_tag"]].itertuples(index=False)))


def _is_best(df: pd.DataFrame, fr: Frames) -> np.ndarray:
    keys = _best_keys(fr)
    return np.array([k in keys for k in map(tuple, df[[*CELL3, "solver_tag"]].itertuples(index=False))], dtype=bool)


# ------------------------------------------------------------------------------------------- the headline


def steps_to_sequential(study: Study | Frames, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """The headline: parallel steps until each seed's x0 is within 40 dB of the sequential x0, one dot per seed,
    per solver variant (its best setting) and cell; the solver's own stop as a dash; sequential steps as a
    black bar; seeds that never got there before the stop as open circles above the bar."""
    fr = _frames(study)
    ps = fr.per_seed
    if ps.empty or not ps["measured"].any():
        return _note(notes, "steps_to_sequential: no parallel run has fidelity (fidelity.parquet or iterates)")
    ps = ps[_is_best(ps, fr) & ps["measured"]]
    models = sorted(ps["model"].unique())
    cells = {
        m: sorted({(s, int(n)) for s, n in zip(g["sampler"], g["steps"], strict=True)}) for m, g in ps.groupby("model")
    }
    widths = [max(2.2, 1.5 * len(cells[m])) for m in models]
    fig, axes = plt.subplots(
        1, len(models), figsize=(sum(widths) + 1, 4.6), squeeze=False, layout="constrained", width_ratios=widths
    )
    variants = fr.order(ps["variant"].unique())
    nv = len(variants)
    top = 0.0
    for ax, model in zip(axes[0], models, strict=True):
        g = ps[ps["model"] == model]
        for x, (sampler, steps) in enumerate(cells[model]):
            ax.hlines(steps, x - 0.45, x + 0.45, color="k", lw=2.5, zorder=1)
            top = max(top, steps)
            c = g[(g["sampler"] == sampler) & (g["steps"] == steps)]
            for j, v in enumerate(variants):
                d = c[c["variant"] == v]
                if d.empty:
                    continue
                xo = x + (j - (nv - 1) / 2) * (0.8 / max(nv, 1))
                jitter = np.linspace(-0.03, 0.03, len(d)) if len(d) > 1 else np.zeros(1)
                colour = fr.colours[v]
                ok = d["to_40db"].notna().to_numpy()
                ax.scatter(xo + jitter[ok], d["to_40db"][ok], s=22, color=colour, zorder=3, edgecolor="white", lw=0.4)
                never = steps * 1.08 + np.zeros((~ok).sum())
                ax.scatter(xo + jitter[~ok], never, s=26, facecolor="none", edgecolor=colour, zorder=3)
                ax.scatter(xo + jitter, d["iterations"], marker="_", s=60, color=colour, alpha=0.6, zorder=2)
        ax.set_xticks(range(len(cells[model])), [f"{sampler_label(s)}-{n}" for s, n in cells[model]])
        ax.set_xlim(-0.6, len(cells[model]) - 0.4)
        ax.set_title(model)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[0]:
        ax.set_ylim(0, top * 1.15)
    axes[0][0].set_ylabel("parallel steps (model calls in sequence)")
    handles = _solver_handles(fr, variants, lw=0)
    handles += [
        Line2D([], [], color="k", lw=2.5, label="sequential sampling (T steps)"),
        Line2D([], [], color="grey", marker="_", lw=0, markersize=9, label="solver's own stop"),
        Line2D(
            [], [], color="grey", marker="o", lw=0, markerfacecolor="none", label="never within 40 dB before its stop"
        ),
    ]
    _legend(fig, handles)
    fig.suptitle(
        "Parallel steps until x0 is the sequential image (PSNR >= 40 dB to the sequential x0), one dot per seed;\n"
        "best setting of each solver per cell (fewest mean steps to 40 dB)",
        fontsize=10,
    )
    return _save(fig, out_dir, "steps_to_sequential")


# -------------------------------------------------------------------------------------------- fidelity


def median_over_seeds(d: pd.DataFrame, column: str) -> pd.Series:
    """Median over seeds of `column` per iteration, a seed that stopped counted at its last value up to the last
    iteration of any seed: its x0 is final, so it stays in the median (dropping it would make the median dip or
    jump where seeds stop, which reads as divergence)."""
    wide = d.pivot_table(index="iteration", columns="seed", values=column, aggfunc="last").sort_index()
    return wide.ffill().median(axis=1)


def fidelity_vs_iteration(study: Study | Frames, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """PSNR of each iteration's x0 to the sequential x0 vs iteration: one colour per solver variant (its best
    setting), the median over seeds as a line, each seed thin. The decoded image's PSNR where the runs recorded
    one (latent models), else the state's (data range 2)."""
    fr = _frames(study)
    fid = fr.study.fidelity
    if fid.empty:
        return _note(notes, "fidelity_vs_iteration: no parallel run has fidelity.parquet or iterates.safetensors")
    fid = fid[_is_best(fid, fr)].copy()
    if fid.empty:
        return _note(notes, "fidelity_vs_iteration: no fidelity rows for the best settings")
    image = fid.groupby(CELL3)["image_psnr_db"].transform(lambda v: bool(np.isfinite(v).any()))
    fid["db"] = np.where(image, fid["image_psnr_db"], fid["psnr_db"])
    fid["db"] = np.minimum(fid["db"].to_numpy(float), PSNR_CAP)
    fid["variant"] = fid["solver_tag"].map(fr.best.drop_duplicates("solver_tag").set_index("solver_tag")["variant"])
    groups = list(fid.groupby(CELL3, sort=True))
    fig, axes = _facets(len(groups), width=4.6, height=3.4, cols=4)
    for ax, (key, g) in zip(axes, groups, strict=True):
        for v in fr.order(g["variant"].unique()):
            d = g[g["variant"] == v]
            colour = fr.colours[v]
            for _, one in d.groupby("seed"):
                ax.plot(one["iteration"], one["db"], color=colour, lw=0.6, alpha=0.35)
            med = median_over_seeds(d, "db")
            ax.plot(med.index, med.to_numpy(), color=colour, lw=2)
        for level in (30, 40, 50):
            ax.axhline(level, color="k", lw=0.8 if level == LEVEL_DB else 0.4, ls=":")
        ax.axvline(int(key[2]), color="k", lw=1.5, alpha=0.6)
        ax.set_ylim(0, PSNR_CAP + 5)
        ax.set_xlim(0, int(key[2]) + 1)
        ax.set_title(_title(key) + (" (decoded image)" if bool(image[g.index].any()) else ""))
        ax.set_xlabel("parallel step (iteration)")
        ax.set_ylabel("PSNR to the sequential x0 (dB)")
    variants = fid["variant"].unique()
    handles = _solver_handles(fr, variants, marker=None)
    handles.append(Line2D([], [], color="k", lw=1.5, alpha=0.6, label="sequential steps T"))
    _legend(fig, handles)
    fig.suptitle(
        "Fidelity to the sequential sample vs iteration (median over seeds, a seed that stopped counted at its "
        f"final value; thin: each seed;\ndotted: 30/40/50 dB; {PSNR_CAP:.0f} dB = identical in float32)",
        fontsize=10,
    )
    return _save(fig, out_dir, "fidelity_vs_iteration")


# ------------------------------------------------------------------------------------------- residuals


def residual_ratio(conv: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, solver_tag, seed, iteration): the largest rho_t / threshold_t over the window steps the stopping
    rule decides, i.e. without x_{u*}, the highest step that failed it, which the safeguard steps exactly
    (docs/METHOD.md section 3; the log marks the steps above it `converged`). So the iteration that ends a solve
    is <= 1 (every step it leaves to the rule passed, or its exact step was the last one), and one line at 1
    stands for every solver's and every step's own threshold. An iteration whose window held only x_{u*} has no
    value."""
    c = conv[np.isfinite(conv["rho"]) & (conv["threshold"] > 0)]
    keys = [*CELL3, "solver_tag", "seed", "iteration"]
    failing = c["step"].where(~c["converged"].astype(bool))
    u_star = failing.groupby([c[k] for k in keys]).transform("max")
    ruled = c[c["step"] != u_star]
    ratio = (ruled["rho"] / ruled["threshold"]).rename("ratio")
    return pd.concat([ruled[keys], ratio], axis=1).groupby(keys)["ratio"].max().reset_index()


def residual_vs_iteration(study: Study | Frames, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """The largest first-order residual in the window relative to its step's threshold, rho_t / threshold_t, vs
    iteration (median over seeds), for the solvers that stop on it; a solver with another rule (Picard's
    change-based tolerance) is left out and named. The step the safeguard steps exactly is left out of each
    iteration (`residual_ratio`)."""
    fr = _frames(study)
    conv = fr.study.convergence
    if conv.empty:
        return _note(notes, "residual_vs_iteration: no convergence.parquet in any verified run")
    conv = conv[conv["solver"] != "sequential"]
    if conv.empty:
        return _note(notes, "residual_vs_iteration: only sequential runs (their residuals are 0 by construction)")
    conv = conv[_is_best(conv, fr)]
    ok, other = first_order_tags(conv, fr.study.solver_settings)
    left_out = sorted({v for t, v in zip(fr.best["solver_tag"], fr.best["variant"], strict=True) if t in other})
    conv = conv[conv["solver_tag"].isin(ok)]
    if conv.empty:
        return _note(notes, "residual_vs_iteration: no solver in this study stops on the first-order residual")
    variant = fr.best.drop_duplicates("solver_tag").set_index("solver_tag")["variant"]
    per = residual_ratio(conv)
    med = per.groupby([*CELL3, "solver_tag", "iteration"])["ratio"].median().reset_index()
    groups = list(med.groupby(CELL3, sort=True))
    fig, axes = _facets(len(groups), width=4.6, height=3.4, cols=4)
    for ax, (key, g) in zip(axes, groups, strict=True):
        for tag, gg in g.groupby("solver_tag"):
            v = variant[tag]
            ax.plot(gg["iteration"] + 1, gg["ratio"].clip(lower=1e-12), color=fr.colours[v], lw=1.6, marker=".")
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-5, float(g["ratio"].min()) / 3))
        ax.set_xlabel("parallel step (iteration)")
        ax.set_ylabel(r"max$_t\ \rho_t$ / threshold$_t$ in the window")
        ax.set_title(_title(key))
    handles = _solver_handles(fr, [variant[t] for t in conv["solver_tag"].unique()], marker=".")
    handles.append(Line2D([], [], color="k", ls=":", label="the step's stopping threshold"))
    _legend(fig, handles)
    title = (
        "First-order residual over its step's threshold before each iteration's update (median over seeds). The step "
        "the safeguard\nsteps exactly is left out: a solve's last iteration is at or below 1, or has no point when "
        "that step was all its window held"
    )
    if left_out:
        title += "\n" + ", ".join(left_out) + " left out: stopped by another rule than each step's residual"
    fig.suptitle(title, fontsize=10)
    return _save(fig, out_dir, "residual_vs_iteration")


# --------------------------------------------------------------------------------------- hyperparameters


def window_ticks(windows: Sequence[object], steps: int) -> tuple[list[int], list[str]]:
    """One labelled tick at every window size of a panel (the log axis alone labels only powers of 2); the whole
    trajectory reads "T"."""
    ws = sorted({int(w) for w in windows})
    return ws, [f"{w} (T)" if w >= steps else str(w) for w in ws]


def window_study(study: Study | Frames, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """Parallel steps to 40 dB (solid) and at the stop (dashed) vs the window W, per cell and solver setting."""
    fr = _frames(study)
    t = window_table(fr.settings) if not fr.settings.empty else pd.DataFrame()
    if t.empty:
        return _note(notes, "window_study: no solver setting was stored at more than one window size")
    groups = list(t.groupby(CELL3, sort=True))
    fig, axes = _facets(len(groups), width=4.8, height=3.6)
    series_keys = setting_keys(t.columns, ("window",))
    variants = set()
    for ax, (key, g) in zip(axes, groups, strict=True):
        for skey, s in g.groupby(series_keys, dropna=False):
            rec = dict(zip(series_keys, skey, strict=True))
            v = rec["variant"]
            variants.add(v)
            s = s.sort_values("window")
            colour = fr.colours[v]
            ax.plot(s["window"], s["to_40db_mean"], marker="o", color=colour, lw=1.8)
            ax.plot(s["window"], s["its_stop_mean"], marker="x", color=colour, lw=1, ls="--")
        ax.axhline(int(key[2]), color="k", lw=1, alpha=0.5)
        ax.set_xscale("log", base=2)
        ticks, labels = window_ticks(g["window"], int(key[2]))
        ax.set_xticks(ticks, labels)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("window size W")
        ax.set_ylabel("parallel steps (mean over seeds)")
        ax.set_title(_title(key))
    handles = _solver_handles(fr, list(variants))
    handles += [
        Line2D([], [], color="grey", marker="o", label="to 40 dB"),
        Line2D([], [], color="grey", marker="x", ls="--", label="at the solver's stop"),
    ]
    _legend(fig, handles)
    fig.suptitle("Window-size study: parallel steps vs W (the grey line: sequential steps T)", fontsize=10)
    return _save(fig, out_dir, "window_study")


def _k_label(k: object, steps: int) -> str:
    return "T" if int(k) >= steps else str(int(k))


def history_order_grid(study: Study | Frames, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """TAA's mean parallel steps over history m x order k: to 40 dB and at the stop, one colour scale for every
    panel; cells where a seed never reached 40 dB say so."""
    fr = _frames(study)
    t = grid_table(fr.settings, "taa") if not fr.settings.empty else pd.DataFrame()
    if t.empty:
        return _note(notes, "history_order_grid: TAA was not stored over several history sizes m or orders k")
    fixed = [c for c in ("variant", "window", "init") if c in t.columns]
    groups = list(t.groupby([*CELL3, *fixed], sort=True, dropna=False))
    vals = pd.concat([t["to_40db_mean"], t["its_stop_mean"]]).to_numpy(float)
    norm = Normalize(vmin=float(np.nanmin(vals)), vmax=float(np.nanmax(vals)))
    cmap = plt.get_cmap("viridis_r")
    fig, axes = plt.subplots(len(groups), 2, figsize=(9.5, 3.6 * len(groups)), squeeze=False, layout="constrained")
    for row, (key, g) in enumerate(groups):
        steps = int(key[2])
        ms = sorted(g["history"].unique())
        ks = sorted(g["order"].unique())
        for col, (metric, what) in enumerate((("to_40db_mean", "to 40 dB"), ("its_stop_mean", "at the stop"))):
            ax = axes[row][col]
            grid = np.full((len(ms), len(ks)), np.nan)
            never = np.zeros_like(grid, dtype=bool)
            for r in g.itertuples():
                i, j = ms.index(r.history), ks.index(r.order)
                grid[i, j] = getattr(r, metric)
                never[i, j] = metric == "to_40db_mean" and r.n_censored_40db > 0
            ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", origin="lower")
            for i in range(len(ms)):
                for j in range(len(ks)):
                    txt = "never" if never[i, j] else ("" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}")
                    if txt:
                        dark = not np.isnan(grid[i, j]) and norm(grid[i, j]) > 0.6
                        ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if dark else "black")
            ax.set_xticks(range(len(ks)), [_k_label(k, steps) for k in ks])
            ax.set_yticks(range(len(ms)), [str(int(m)) for m in ms])
            ax.set_xlabel("order k")
            ax.set_ylabel("history m (1 = plain fixed point)")
            extra = ", ".join(f"{c}={v}" for c, v in zip(fixed, key[3:], strict=True) if c != "variant")
            ax.set_title(f"{_title(key)} {key[3]}: {what}" + (f"\n{extra}" if extra else ""), fontsize=9)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="parallel steps (mean over seeds)")
    fig.suptitle("TAA over history m x order k (one colour scale for all panels; blank = not run)", fontsize=10)
    return _save(fig, out_dir, "history_order_grid")


def speedup_vs_gpus(
    study: Study | Frames | pd.DataFrame, out_dir: str | Path, notes: list[str] | None = None
) -> list[Path]:
    """Wall-clock speedup over sequential vs number of processes (world_size), per solver setting."""
    if isinstance(study, pd.DataFrame):
        samples = study
    else:
        samples = study.samples if isinstance(study, Study) else study.study.samples
    if samples.empty or "world_size" not in samples.columns:
        return _note(notes, "speedup_vs_gpus: no samples")
    par = samples[samples["solver"] != "sequential"]
    sizes = sorted(int(v) for v in par["world_size"].unique())
    if len(sizes) < 2:
        return _note(
            notes,
            f"speedup_vs_gpus: all parallel runs used world_size {sizes} "
            "(one GPU count); a scaling figure needs runs at several world sizes",
        )
    seq = samples[samples["solver"] == "sequential"]
    if seq.empty:
        return _note(notes, "speedup_vs_gpus: no sequential run to compare wall time with")
    ref = (
        seq.sort_values("world_size")
        .drop_duplicates([*CELL3, "seed"])
        .set_index([*CELL3, "seed"])["wall_s"]
        .rename("seq_wall_s")
    )
    p = par.join(ref, on=[*CELL3, "seed"])
    p["speedup_time"] = p["seq_wall_s"] / p["wall_s"]
    agg = p.groupby([*CELL3, "solver_tag", "world_size"])["speedup_time"].agg(["mean", "std"]).reset_index()
    from .labels import setting_label, variant_label

    colours = palette([variant_label(t) for t in agg["solver_tag"].unique()])
    groups = list(agg.groupby(CELL3, sort=True))
    fig, axes = _facets(len(groups))
    for ax, (key, g) in zip(axes, groups, strict=True):
        for tag, gg in g.groupby("solver_tag"):
            ax.errorbar(
                gg["world_size"],
                gg["mean"],
                yerr=gg["std"].fillna(0),
                marker="o",
                capsize=3,
                color=colours[variant_label(tag)],
                label=setting_label(tag, int(key[2])),
            )
        ax.axhline(1, color="k", ls=":", lw=1)
        ax.set_xlabel("processes (GPUs) evaluating the model")
        ax.set_ylabel("wall-clock speedup over sequential")
        ax.set_title(_title(key))
        ax.legend(fontsize=7)
    return _save(fig, out_dir, "speedup_vs_gpus")


# -------------------------------------------------------------------------------------------- iterates


def cell_iterates(study: Study) -> dict[tuple, dict[int, np.ndarray]]:
    """(model, sampler, steps, solver_tag) -> {seed: x0 of iterations 1..I [I, *S]} from iterates.safetensors,
    each seed cut at its own stop, shards merged."""
    from .loaders import run_seeds

    out: dict[tuple, dict[int, np.ndarray]] = {}
    for run in study.runs_with("iterates.safetensors"):
        s = run.read_parquet("samples.parquet")
        key = (s["model"].iloc[0], s["sampler"].iloc[0], int(s["steps"].iloc[0]), s["solver_tag"].iloc[0])
        tensors, meta = run.read_safetensors("iterates.safetensors")
        x = tensors["iterates"]
        stop = s.set_index("seed")["iterations"]
        for j, seed in enumerate(run_seeds(run, meta)[: x.shape[0]]):
            out.setdefault(key, {})[int(seed)] = x[j, : min(int(stop.get(seed, x.shape[1])), x.shape[1])]
    return dict(sorted(out.items()))


def _as_image(x: np.ndarray) -> np.ndarray:
    """A state as something imshow can draw: [C,H,W] images (first channel or RGB), or a square-reshaped vector."""
    if x.ndim == 3:
        img = x[:3] if x.shape[0] >= 3 else x[:1]
        img = np.moveaxis(img, 0, -1)
        return img[..., 0] if img.shape[-1] == 1 else img
    if x.ndim == 2:
        return x
    v = x.ravel()
    side = math.isqrt(v.size)
    return v.reshape(side, side) if side * side == v.size else v[None, :]


def _columns(max_stop: int, n: int) -> list[int]:
    """About n iterations to show, dense at the start where x0 changes most (1, 2, 3, 4, 6, 8, 12, ...)."""
    if max_stop <= n:
        return list(range(1, max_stop + 1))
    geo = np.unique(np.round(np.geomspace(1, max_stop, n)).astype(int))
    return sorted(set(geo.tolist()))


def iterate_grids(
    study: Study | Frames, out_dir: str | Path, notes: list[str] | None = None, columns: int = 9
) -> list[Path]:
    """One figure per cell: rows = solver variants (best setting), columns = iterations (x0 after that many
    parallel steps, blank once the solver stopped), then each solver's x0 at its stop and the sequential x0.
    One seed (the lowest with iterates for every row); images on the state's range [-1, 1]."""
    fr = _frames(study)
    its = cell_iterates(fr.study)
    best = {tuple(r[:4]): r[4] for r in fr.best[[*CELL3, "solver_tag", "variant"]].itertuples(index=False)}
    cells: dict[tuple, dict[str, dict[int, np.ndarray]]] = {}
    for key, per in its.items():
        if key in best:
            cells.setdefault(key[:3], {})[best[key]] = per
    if not cells:
        return _note(notes, "iterate_grids: no parallel run stored iterates.safetensors")
    ref = fr.study.sequential_x0
    paths: list[Path] = []
    for cell, rows in sorted(cells.items()):
        seeds = sorted(set.intersection(*(set(v) for v in rows.values())))
        if not seeds:
            continue
        seed = seeds[0]
        r = ref.get((*cell, seed))
        variants = fr.order(rows)
        stops = {v: rows[v][seed].shape[0] for v in variants}
        cols = _columns(max(stops.values()), columns)
        image = r is not None and r.ndim == 3
        lo, hi = (-1.0, 1.0) if image or r is None else (float(r.min()), float(r.max()))
        ncol = len(cols) + 2
        fig, axes = plt.subplots(
            len(variants), ncol, figsize=(0.95 * ncol + 1.6, 1.05 * len(variants) + 0.6), squeeze=False,
            layout="constrained",
        )  # fmt: skip
        for i, v in enumerate(variants):
            xs = rows[v][seed]
            for c in range(ncol):
                ax = axes[i][c]
                ax.set_xticks([])
                ax.set_yticks([])
                for sp in ax.spines.values():
                    sp.set_visible(False)
                if c < len(cols):
                    if cols[c] > xs.shape[0]:
                        continue
                    img = xs[cols[c] - 1]
                    if i == 0:
                        ax.set_title(f"{cols[c]}", fontsize=8)
                elif c == len(cols):
                    img = xs[-1]
                    ax.set_title(f"stop: {xs.shape[0]}", fontsize=7, color=fr.colours[v])
                else:
                    if r is None or i > 0:
                        continue
                    img = r
                    ax.set_title("sequential", fontsize=8)
                ax.imshow(
                    np.clip((_as_image(np.asarray(img, np.float64)) - lo) / max(hi - lo, 1e-12), 0, 1),
                    cmap="gray",
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
            axes[i][0].set_ylabel(v, fontsize=8, rotation=0, ha="right", va="center", color=fr.colours[v])
        fig.suptitle(
            f"{_title(cell)}, seed {seed}: x0 after each number of parallel steps (columns), per solver (rows)",
            fontsize=9,
        )
        name = f"iterates_{cell[0]}_{cell[1]}-{cell[2]}".replace("/", "_")
        paths += _save(fig, out_dir, name)
    if not paths:
        return _note(notes, "iterate_grids: no seed has iterates for every solver of a cell")
    return paths


# ------------------------------------------------------------------------------------------------- index

FIGURES = (
    "steps_to_sequential",
    "fidelity_vs_iteration",
    "residual_vs_iteration",
    "window_study",
    "history_order_grid",
    "speedup_vs_gpus",
    "iterate_grids",
)


def all_figures(
    study: Study, out_dir: str | Path, notes: list[str] | None = None, yardstick: Yardstick | None = None
) -> dict[str, list[Path]]:
    """Every figure, and out_dir/index.json: {name: {"files": [file names], "note": why not made or null}};
    `yardstick`: the study's frames when the caller has them already."""
    out_dir = Path(out_dir)
    fr = Frames(study, yardstick)
    made: dict[str, list[Path]] = {}
    index: dict[str, dict] = {}
    fns = {
        "steps_to_sequential": steps_to_sequential,
        "fidelity_vs_iteration": fidelity_vs_iteration,
        "residual_vs_iteration": residual_vs_iteration,
        "window_study": window_study,
        "history_order_grid": history_order_grid,
        "speedup_vs_gpus": speedup_vs_gpus,
        "iterate_grids": iterate_grids,
    }
    for name in FIGURES:
        mine: list[str] = []
        made[name] = fns[name](fr, out_dir, mine)
        if notes is not None:
            notes += mine
        why = "; ".join(m.removeprefix(f"{name}: ") for m in mine) if not made[name] else ""
        index[name] = {"files": [p.name for p in made[name]], "note": why or None}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return made


def read_index(out_dir: str | Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """(figure -> its files, figure -> why it was not made) from out_dir/index.json (written by all_figures);
    without an index, the PNGs present under the figures' names."""
    out_dir = Path(out_dir)
    p = out_dir / INDEX
    if not p.is_file():
        return {n: [q] for n in FIGURES if (q := out_dir / f"{n}.png").is_file()}, {}
    data: Mapping[str, Mapping] = json.loads(p.read_text())
    files = {n: [out_dir / f for f in d.get("files", []) if (out_dir / f).is_file()] for n, d in data.items()}
    why = {n: str(d["note"]) for n, d in data.items() if d.get("note")}
    return files, why
