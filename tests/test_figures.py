"""What the figures plot, on the committed miniature results (tests/fixtures/results_mini, real solvers): the
fidelity median with stopped seeds held at their final value, the residual relative to each step's threshold
without the step the safeguard makes exact, and a labelled tick at every window size."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import figures
from analysis.loaders import load_study

MINI = Path(__file__).resolve().parent / "fixtures" / "results_mini"
CELL = {"model": "gmm", "sampler": "ddim", "steps": 24}


@pytest.fixture()
def drawn(monkeypatch) -> dict[str, plt.Figure]:
    """The figures as drawn, kept open instead of written (the writer closes them)."""
    out: dict[str, plt.Figure] = {}
    monkeypatch.setattr(figures, "_save", lambda fig, out_dir, name: out.setdefault(name, fig) and [])
    yield out
    for fig in out.values():
        plt.close(fig)


def test_fidelity_median_holds_a_stopped_seed_at_its_final_value():
    # seed 0 stops after iteration 2 at 80 dB; seed 1 goes on: 60, 70, 75, 79
    d = pd.DataFrame(
        {"seed": [0, 0, 1, 1, 1, 1], "iteration": [1, 2, 1, 2, 3, 4], "db": [50.0, 80.0, 60.0, 70.0, 75.0, 79.0]}
    )
    med = figures.median_over_seeds(d, "db")
    assert med.index.tolist() == [1, 2, 3, 4]
    assert med.tolist() == [55.0, 75.0, 77.5, 79.5]  # not 75 and 79 (seed 1 alone): no dip where seed 0 stopped


def test_fidelity_figure_ends_at_the_median_of_the_final_values(drawn):
    """Once every seed has stopped, the thick line is the median of the seeds' final PSNR; the figure without
    stopped seeds ended at the slowest seed's value instead."""
    study = load_study(MINI)
    fr = figures.Frames(study)
    figures.fidelity_vs_iteration(fr, "unused")
    ax = drawn["fidelity_vs_iteration"].axes[0]
    thick = {tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color(): line
             for line in ax.get_lines() if line.get_linewidth() == 2}  # fmt: skip
    fid = study.fidelity[figures._is_best(study.fidelity, fr)]
    fid = fid.assign(db=np.minimum(fid["psnr_db"].to_numpy(float), figures.PSNR_CAP))
    variant = fr.best.drop_duplicates("solver_tag").set_index("solver_tag")["variant"]
    checked = 0
    for tag, d in fid.groupby("solver_tag"):
        final = d.sort_values("iteration").groupby("seed")["db"].last()
        line = thick[fr.colours[variant[tag]]]
        assert line.get_ydata()[-1] == pytest.approx(final.median(), rel=4 * np.finfo(float).eps), tag
        checked += final.nunique() > 1
    assert checked  # some variant's seeds ended at different values


def test_residual_ratio_leaves_out_the_exact_step_by_hand():
    # one iteration: step 2 passed (kept), step 1 is u* (fails, stepped exactly), step 0 below it still fails
    conv = pd.DataFrame(
        {
            **{k: [v] * 3 for k, v in CELL.items()},
            "solver_tag": ["taa"] * 3,
            "seed": [0] * 3,
            "iteration": [4] * 3,
            "step": [2, 1, 0],
            "rho": [5e-4, 3e-3, 2e-3],
            "threshold": [1e-3] * 3,
            "converged": [True, False, False],
        }
    )
    r = figures.residual_ratio(conv)
    assert r["ratio"].tolist() == pytest.approx([2.0], rel=4 * np.finfo(float).eps)


def test_every_solve_ends_at_or_below_its_threshold_in_the_residual_figure(drawn):
    study = load_study(MINI)
    conv = study.convergence[study.convergence["solver"] != "sequential"]
    last = conv[conv["iteration"] == conv.groupby(["solver_tag", "seed"])["iteration"].transform("max")]
    raw = last.assign(r=last["rho"] / last["threshold"]).groupby(["solver_tag", "seed"])["r"].max()
    assert (raw > 1).any()  # some solve's last window held a step that failed the rule (the safeguard's exact step)
    ratio = figures.residual_ratio(conv)
    end = conv.groupby(["solver_tag", "seed"])["iteration"].max().rename("end").reset_index()
    at_end = ratio.merge(end, on=["solver_tag", "seed"])
    at_end = at_end[at_end["iteration"] == at_end["end"]]
    assert len(at_end) and (at_end["ratio"] <= 1).all(), at_end
    figures.residual_vs_iteration(figures.Frames(study), "unused")
    ax = drawn["residual_vs_iteration"].axes[0]
    assert [tuple(line.get_ydata()) for line in ax.get_lines() if line.get_linestyle() == ":"] == [(1.0, 1.0)]


def test_window_figure_labels_every_window(drawn):
    figures.window_study(figures.Frames(load_study(MINI)), "unused")
    ax = drawn["window_study"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "24 (T)"]
    assert ax.get_xticks().tolist() == [8, 24] and len(ax.get_xticks(minor=True)) == 0
    assert figures.window_ticks([100, 4, 16, 4.0], 100) == ([4, 16, 100], ["4", "16", "100 (T)"])
