"""Figures from stored results (PNG + PDF). Every function returns the paths it wrote; when its inputs are
missing it writes nothing, returns [] and says why (logged, and appended to `notes` when given).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .loaders import Run, Study  # noqa: E402
from .tables import grid_table, window_table  # noqa: E402

__all__ = [
    "residual_vs_iteration",
    "fidelity_vs_iteration",
    "window_study",
    "history_order_grid",
    "speedup_vs_gpus",
    "iterate_grids",
    "all_figures",
]

log = logging.getLogger("analysis")
CELL3 = ["model", "sampler", "steps"]


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


def _facets(n: int, width: float = 5.0, height: float = 3.6) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _title(key: Sequence[object]) -> str:
    model, sampler, steps = key[:3]
    return f"{model} {str(sampler).upper()}-{steps}"


# ------------------------------------------------------------------------------------------- residuals


def residual_vs_iteration(study: Study, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """Largest first-order residual rho_t in the window vs iteration, for the fastest setting of each solver
    (median over seeds)."""
    conv = study.convergence
    if conv.empty:
        return _note(notes, "residual_vs_iteration: no convergence.parquet in any verified run")
    conv = conv[conv["solver"] != "sequential"]
    if conv.empty:
        return _note(notes, "residual_vs_iteration: only sequential runs (their residuals are 0 by construction)")
    keep = _best_per_solver(study, list(conv.groupby([*CELL3, "solver_tag"]).groups))
    conv = conv[conv.set_index([*CELL3, "solver_tag"]).index.isin(keep)]
    per = conv.groupby([*CELL3, "solver_tag", "seed", "iteration"])["rho"].max().reset_index()
    med = per.groupby([*CELL3, "solver_tag", "iteration"])["rho"].median().reset_index()
    groups = list(med.groupby(CELL3, sort=True))
    fig, axes = _facets(len(groups))
    for ax, (key, g) in zip(axes, groups, strict=False):
        for tag, gg in g.groupby("solver_tag", sort=True):
            ax.plot(gg["iteration"] + 1, gg["rho"].clip(lower=1e-16), marker=".", lw=1.2, label=tag)
        ax.axhline(1e-3, color="k", ls=":", lw=1, label="1e-3 (authors' tolerance)")
        ax.set_yscale("log")
        ax.set_xlabel("parallel step (iteration)")
        ax.set_ylabel(r"max$_t\ \rho_t$ in the window (median over seeds)")
        ax.set_title(_title(key))
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("Residual vs iteration (before each iteration's update)")
    return _save(fig, out_dir, "residual_vs_iteration")


# -------------------------------------------------------------------------------------- iterates / fidelity


def _sample_seeds(run: Run) -> list[int]:
    """Seeds in the order of the run's tensors (safetensors metadata `seeds`, else samples.parquet order)."""
    _, meta = run.read_safetensors("trajectory.safetensors")
    if "seeds" in meta:
        return [int(v) for v in json.loads(meta["seeds"])]
    return [int(v) for v in run.read_parquet("samples.parquet")["seed"]]


def _sequential_x0(study: Study) -> dict[tuple, np.ndarray]:
    """(model, sampler, steps, seed) -> sequential x0, from trajectory.safetensors of sequential runs."""
    out: dict[tuple, np.ndarray] = {}
    for run in study.runs:
        s = run.read_parquet("samples.parquet")
        if s["solver"].iloc[0] != "sequential":
            continue
        tensors, _ = run.read_safetensors("trajectory.safetensors")
        x0 = tensors["x0"] if "x0" in tensors else tensors["trajectory"][:, 0]
        key = (s["model"].iloc[0], s["sampler"].iloc[0], int(s["steps"].iloc[0]))
        for i, seed in enumerate(_sample_seeds(run)):
            out[(*key, seed)] = np.asarray(x0[i], dtype=np.float64)
    return out


def _iterates(run: Run) -> tuple[np.ndarray, list[int], np.ndarray]:
    """x0 after each iteration [K, I, *S] (the run's first K samples), their seeds, and each one's iterations.

    The workflow stores `iterates` [K, I, *S] float32 with I the iterations of the whole run (a sample that
    finished earlier repeats its final x0); its seeds are the first K of the metadata's `seeds`.
    """
    tensors, meta = run.read_safetensors("iterates.safetensors")
    if "iterates" not in tensors:
        raise KeyError(f"{run.path}/iterates.safetensors has no 'iterates' tensor (has {sorted(tensors)})")
    x = tensors["iterates"]
    seeds = [int(v) for v in json.loads(meta["seeds"])] if "seeds" in meta else _sample_seeds(run)
    seeds = seeds[: x.shape[0]]
    s = run.read_parquet("samples.parquet").set_index("seed")["iterations"]
    its = np.asarray([min(int(s.get(seed, x.shape[1])), x.shape[1]) for seed in seeds], dtype=int)
    return x, seeds, its


def cell_iterates(study: Study) -> dict[tuple, list[tuple[int, np.ndarray]]]:
    """(model, sampler, steps, solver_tag) -> [(seed, x0 of iterations 1..I [I, *S])], shards merged."""
    out: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    for run in study.runs_with("iterates.safetensors"):
        s = run.read_parquet("samples.parquet")
        key = (s["model"].iloc[0], s["sampler"].iloc[0], int(s["steps"].iloc[0]), s["solver_tag"].iloc[0])
        x, seeds, its = _iterates(run)
        out.setdefault(key, []).extend((seed, x[j, : int(its[j])]) for j, seed in enumerate(seeds))
    for v in out.values():
        v.sort(key=lambda p: p[0])
    return dict(sorted(out.items()))


def _best_per_solver(study: Study, keys: list[tuple]) -> list[tuple]:
    """Of (model, sampler, steps, solver_tag) keys: per (model, sampler, steps, solver), the fastest setting
    (fewest mean iterations), sequential left out."""
    s = study.samples
    mean_it = s.groupby([*CELL3, "solver_tag"])["iterations"].mean()
    solver_of = s.drop_duplicates("solver_tag").set_index("solver_tag")["solver"]
    best: dict[tuple, tuple] = {}
    for key in keys:
        if solver_of.get(key[3], key[3]) == "sequential":
            continue
        g = (*key[:3], solver_of.get(key[3], key[3]))
        if g not in best or mean_it.get(key, np.inf) < mean_it.get(best[g], np.inf):
            best[g] = key
    return sorted(best.values())


def _pixel_ranges(study: Study) -> dict[str, tuple[float, float]]:
    """model -> (lo, hi) of its state when the state is an image (manifest `pixel_range`, top level or config)."""
    out = {}
    for run in study.runs:
        pr = run.manifest.get("pixel_range") or run.config.get("pixel_range")
        if pr is not None and run.config.get("model") is not None:
            out[str(run.config["model"])] = (float(pr[0]), float(pr[1]))
    return out


def fidelity_frame(study: Study) -> pd.DataFrame:
    """Per stored iterate: max and RMS distance of x0 to the sequential x0 (model state space), and the PSNR
    (dB, data range [0, 1]) where the model's state is an image with a known pixel range."""
    ref = _sequential_x0(study)
    ranges = _pixel_ranges(study)
    cells = cell_iterates(study)
    rows = []
    for key in _best_per_solver(study, list(cells)):
        pr = ranges.get(str(key[0]))
        for seed, xs in cells[key]:
            r = ref.get((*key[:3], seed))
            if r is None:
                continue
            a = xs.reshape(xs.shape[0], -1).astype(np.float64)
            b = r.reshape(1, -1)
            d = a - b
            psnr = np.full(len(a), np.nan)
            if pr is not None:
                lo, hi = pr
                mse = ((np.clip((a - lo) / (hi - lo), 0, 1) - np.clip((b - lo) / (hi - lo), 0, 1)) ** 2).mean(axis=1)
                with np.errstate(divide="ignore"):
                    psnr = 10 * np.log10(1.0 / mse)
            for i in range(d.shape[0]):
                rows.append(
                    (*key, seed, i + 1, float(np.abs(d[i]).max()), float(np.sqrt((d[i] ** 2).mean())), float(psnr[i]))
                )
    return pd.DataFrame(rows, columns=[*CELL3, "solver_tag", "seed", "iteration", "err_max", "err_rms", "psnr"])


def fidelity_vs_iteration(study: Study, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """Distance (and PSNR, for image states) of each iterate's x0 to the sequential sample vs iteration, for the
    fastest setting of each solver (median over the seeds with stored iterates)."""
    if not study.runs_with("iterates.safetensors"):
        return _note(notes, "fidelity_vs_iteration: no run stored iterates.safetensors")
    df = fidelity_frame(study)
    if df.empty:
        return _note(
            notes,
            "fidelity_vs_iteration: iterates exist but no sequential run of the same "
            "model/sampler/steps/seed to compare with",
        )
    cols = ["err_max", "err_rms", "psnr"]
    med = df.groupby([*CELL3, "solver_tag", "iteration"])[cols].median().reset_index()
    groups = list(med.groupby(CELL3, sort=True))
    with_psnr = bool(np.isfinite(med["psnr"]).any())
    fig, axes = _facets(len(groups) * (2 if with_psnr else 1))
    for n, (key, g) in enumerate(groups):
        ax = axes[n * (2 if with_psnr else 1)]
        for tag, gg in g.groupby("solver_tag", sort=True):
            (line,) = ax.plot(gg["iteration"], gg["err_max"].clip(lower=1e-12), marker=".", lw=1.2, label=f"{tag} max")
            ax.plot(
                gg["iteration"],
                gg["err_rms"].clip(lower=1e-12),
                ls="--",
                lw=0.8,
                color=line.get_color(),
                label=f"{tag} RMS",
            )
            if with_psnr:
                axes[2 * n + 1].plot(gg["iteration"], gg["psnr"], marker=".", lw=1.2, label=tag)
        ax.set_yscale("log")
        ax.set_xlabel("parallel step (iteration)")
        ax.set_ylabel(r"$|x_0^{(i)} - x_0^{seq}|$ (median over seeds)")
        ax.set_title(_title(key))
        ax.legend(fontsize=6)
        if with_psnr:
            pax = axes[2 * n + 1]
            pax.set_xlabel("parallel step (iteration)")
            pax.set_ylabel("PSNR to the sequential image (dB)")
            pax.set_title(_title(key))
            pax.legend(fontsize=6)
    fig.suptitle("Fidelity to the sequential sample vs iteration (fastest setting of each solver)")
    return _save(fig, out_dir, "fidelity_vs_iteration")


def _as_image(x: np.ndarray) -> np.ndarray:
    """A state as something imshow can draw: [C,H,W] images/latents, or a square-reshaped vector."""
    if x.ndim == 3:
        c = x.shape[0]
        img = x[:3] if c >= 3 else x[:1]
        img = np.moveaxis(img, 0, -1)
        return img[..., 0] if img.shape[-1] == 1 else img
    if x.ndim == 2:
        return x
    v = x.ravel()
    side = int(math.isqrt(v.size))
    if side * side == v.size:
        return v.reshape(side, side)
    return v[None, :]


def iterate_grids(
    study: Study, out_dir: str | Path, notes: list[str] | None = None, max_samples: int = 2, columns: int = 8
) -> list[Path]:
    """x0 of the iterates at evenly spaced iterations next to the sequential x0: for every model, sampler,
    steps and solver with stored iterates, its fastest setting."""
    cells = {k: v for k, v in cell_iterates(study).items() if k[3] != "sequential"}
    if not cells:
        return _note(notes, "iterate_grids: no parallel run stored iterates.safetensors")
    cells = {k: cells[k] for k in _best_per_solver(study, list(cells))}
    ref = _sequential_x0(study)
    paths: list[Path] = []
    for (*key, tag), items in cells.items():
        items = items[:max_samples]
        fig, axes = plt.subplots(
            len(items), columns + 1, figsize=(1.3 * (columns + 1), 1.45 * len(items)), squeeze=False
        )
        for j, (seed, xs) in enumerate(items):
            r = ref.get((*key, seed))
            span = r if r is not None else xs
            lo, hi = float(span.min()), float(span.max())
            picks = np.unique(np.linspace(0, xs.shape[0] - 1, columns).round().astype(int))
            for c in range(columns + 1):
                ax = axes[j, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c < len(picks):
                    img = _as_image(xs[picks[c]].astype(np.float64))
                    ax.set_title(f"it {picks[c] + 1}", fontsize=7)
                elif c == columns and r is not None:
                    img = _as_image(r)
                    ax.set_title("sequential", fontsize=7)
                else:
                    ax.set_visible(False)
                    continue
                ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1), cmap="gray", interpolation="nearest")
            axes[j, 0].set_ylabel(f"seed {seed}", fontsize=7)
        fig.suptitle(f"{_title(key)} {tag}: x0 of the iterates converging to the sequential sample", fontsize=8)
        name = f"iterates_{key[0]}_{key[1]}-{key[2]}_{tag}".replace("/", "_").replace("+", "plus")
        paths += _save(fig, out_dir, name)
    return paths


# --------------------------------------------------------------------------------------- hyperparameters


def window_study(study: Study, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """Parallel steps (and NFE) vs window size W."""
    t = window_table(study.samples)
    if t.empty:
        return _note(notes, "window_study: no solver setting was stored at more than one window size")
    label_cols = [c for c in ("solver", "history", "order") if c in t.columns]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    id_cols = [c for c in t.columns if c not in ("window", "n_seeds") and not c.endswith(("_mean", "_std"))]
    for key, g in t.groupby(id_cols, dropna=False):
        rec = dict(zip(id_cols, key, strict=True))
        label = f"{_title((rec['model'], rec['sampler'], rec['steps']))} " + " ".join(
            f"{c}={rec[c]}" for c in label_cols
        )
        g = g.sort_values("window")
        axes[0].errorbar(
            g["window"], g["iterations_mean"], yerr=g["iterations_std"].fillna(0), marker="o", capsize=3, label=label
        )
        axes[1].errorbar(g["window"], g["nfe_mean"], yerr=g["nfe_std"].fillna(0), marker="o", capsize=3, label=label)
    axes[0].set_ylabel("parallel steps to converge")
    axes[1].set_ylabel("NFE (states evaluated)")
    for ax in axes:
        ax.set_xlabel("window size W")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=6)
    fig.suptitle("Window-size study (mean ± std over seeds)")
    return _save(fig, out_dir, "window_study")


def history_order_grid(study: Study, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """Heatmap of TAA's mean parallel steps over history m x order k."""
    t = grid_table(study.samples, "taa")
    if t.empty:
        return _note(notes, "history_order_grid: TAA was not stored at several history sizes m or orders k")
    groups = list(t.groupby(CELL3, sort=True))
    fig, axes = _facets(len(groups), width=4.8, height=3.6)
    for ax, (key, g) in zip(axes, groups, strict=False):
        piv = g.pivot_table(index="history", columns="order", values="iterations_mean", aggfunc="mean")
        sns.heatmap(piv, annot=True, fmt=".1f", cmap="viridis_r", ax=ax, cbar_kws={"label": "parallel steps"})
        ax.set_xlabel("order k")
        ax.set_ylabel("history m")
        ax.set_title(_title(key))
    fig.suptitle("TAA: parallel steps over history m x order k (mean over seeds; blank = not run)")
    return _save(fig, out_dir, "history_order_grid")


def speedup_vs_gpus(samples: pd.DataFrame, out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """Wall-clock speedup over sequential vs number of processes (world_size), per solver."""
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
    groups = list(agg.groupby(CELL3, sort=True))
    fig, axes = _facets(len(groups))
    for ax, (key, g) in zip(axes, groups, strict=False):
        for tag, gg in g.groupby("solver_tag"):
            ax.errorbar(gg["world_size"], gg["mean"], yerr=gg["std"].fillna(0), marker="o", capsize=3, label=tag)
        ax.axhline(1, color="k", ls=":", lw=1)
        ax.set_xlabel("processes (GPUs) evaluating the model")
        ax.set_ylabel("wall-clock speedup over sequential")
        ax.set_title(_title(key))
        ax.legend(fontsize=6)
    return _save(fig, out_dir, "speedup_vs_gpus")


FIGURES = (
    "residual_vs_iteration",
    "fidelity_vs_iteration",
    "window_study",
    "history_order_grid",
    "speedup_vs_gpus",
)


def all_figures(study: Study, out_dir: str | Path, notes: list[str] | None = None) -> dict[str, list[Path]]:
    out_dir = Path(out_dir)
    return {
        "residual_vs_iteration": residual_vs_iteration(study, out_dir, notes),
        "fidelity_vs_iteration": fidelity_vs_iteration(study, out_dir, notes),
        "window_study": window_study(study, out_dir, notes),
        "history_order_grid": history_order_grid(study, out_dir, notes),
        "speedup_vs_gpus": speedup_vs_gpus(study.samples, out_dir, notes),
        "iterate_grids": iterate_grids(study, out_dir, notes),
    }
