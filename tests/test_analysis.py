"""The analysis package on committed miniature results (tests/fixtures/results_mini, made by the real solvers and
the real writer: python tests/fixtures/make_results_mini.py)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    IncompleteStudyError,
    ResultError,
    expected_cells,
    flat_rule,
    load_study,
    paper_rule,
    parse_threshold,
    recount_steps,
    summary_table,
    verify_run,
    with_step_scales,
)
from analysis.audit import (
    NOT_APPLICABLE,
    NOT_MEASURABLE,
    NOT_REPRODUCED,
    NOT_RUN,
    PARTLY,
    REPRODUCED,
    Outcome,
    Verdict,
    audit,
    decide,
    decide_embedded,
    load_claims,
    measure,
    measure_embedded,
    run_check,
)
from analysis.figures import history_order_grid, speedup_vs_gpus, window_study
from analysis.loaders import workflow_solver_tags
from analysis.tables import first_order_tags, recount_table
from analysis.yardstick import iterations_to_db, paper_table, per_seed, settings, study_settings
from parataa.manifest import seal

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "fixtures" / "results_mini"
CONFIG = MINI / "study.yaml"
CELL = MINI / "runs" / "gmm" / "ddim-24"
TAA = "taa_m2_k24_w24_tol1e-3"


@pytest.fixture()
def mini(tmp_path: Path) -> Path:
    dst = tmp_path / "mini"
    shutil.copytree(MINI, dst)
    return dst


def _raw_samples() -> pd.DataFrame:
    """samples.parquet of every shard, read directly (not through the loader under test)."""
    return pd.concat([pd.read_parquet(p) for p in sorted(MINI.glob("runs/*/*/*/shard-*/samples.parquet"))])


# ------------------------------------------------------------------------------------------------ loaders


def test_analysis_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from analysis.__main__ import main\n"
        f"rc = main(['--results', {str(MINI)!r}, '--out', {str(tmp_path / 'out')!r}, '--strict'])\n"
        "assert 'torch' not in sys.modules, 'analysis imported torch'\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    for name in ("paper_table", "yardstick", "summary", "recount", "window_study", "history_order_grid"):
        for ext in ("csv", "md", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 100
    pngs = sorted((out / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {
        "steps_to_sequential",
        "residual_vs_iteration",
        "fidelity_vs_iteration",
        "window_study",
        "history_order_grid",
        "iterates_gmm_ddim-24",
    } <= names
    for p in pngs:
        assert p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG"
        assert p.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"
    index = json.loads((out / "figures" / "index.json").read_text())
    assert index["steps_to_sequential"]["files"] == ["steps_to_sequential.png", "steps_to_sequential.pdf"]
    assert index["speedup_vs_gpus"] == {"files": [], "note": index["speedup_vs_gpus"]["note"]}
    assert index["speedup_vs_gpus"]["note"].startswith("all parallel runs used world_size [1]")
    page = (out / "audit.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    for c in load_claims()["claims"]:
        assert c["id"] in page
    md = (out / "audit.md").read_text()
    assert "Figure `speedup_vs_gpus` was not made: all parallel runs used world_size [1]" in md
    assert "see notes" not in md and "see notes" not in page
    assert "On the paper's models: " in md and "On the embedded models: " in md
    assert r"\begin{tabular}" in (out / "tables" / "summary.tex").read_text()


def test_loads_complete_fixture_in_strict_mode() -> None:
    study = load_study(MINI, expected=CONFIG, strict=True)
    assert len(study.runs) == 9 and not study.rejected and not study.problems
    assert len(study.samples) == 16  # 8 cells x 2 seeds, the sequential cell from two shards
    assert sorted(study.samples.loc[study.samples.solver == "sequential", "seed"]) == [0, 1]
    assert set(study.convergence.columns) >= {"seed", "iteration", "step", "rho", "threshold", "converged"}


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_manifest", "listed_file_gone", "bad_json"])
def test_damaged_run_does_not_exist(mini: Path, damage: str) -> None:
    run = mini / "runs" / "gmm" / "ddim-24" / TAA / "shard-0"
    target = run / "convergence.parquet"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "no_manifest":
        (run / "manifest.json").unlink()
    elif damage == "listed_file_gone":
        target.unlink()
    else:
        (run / "manifest.json").write_text("{not json")
    reason = {
        "flip": "sha256 mismatch for convergence.parquet",
        "truncate": "sha256 mismatch",
        "no_manifest": "no manifest.json",
        "listed_file_gone": "listed in manifest.json but missing",
        "bad_json": "not valid JSON",
    }[damage]
    with pytest.raises(ResultError, match=reason):
        verify_run(run)
    study = load_study(mini, expected=mini / "study.yaml")
    assert [r.path for r in study.rejected] == [run]
    assert TAA not in set(study.samples["solver_tag"])  # never read
    assert any(TAA in p and p.startswith("missing cell") for p in study.problems)
    with pytest.raises(IncompleteStudyError) as e:
        load_study(mini, expected=mini / "study.yaml", strict=True)
    assert e.value.missing == [
        f"model=gmm sampler=ddim steps=24 solver_tag={TAA}: no verified run (runs/gmm/ddim-24/{TAA}/)"
    ]


def test_changed_schedule_coefficient_is_refused_in_strict_mode(mini: Path) -> None:
    """Every manifest field is under the manifest's own hash: one coefficient of the schedule changed and the
    run is rejected (the recount would otherwise use it)."""
    run = mini / "runs" / "gmm" / "ddim-24" / TAA / "shard-0"
    m = json.loads((run / "manifest.json").read_text())
    m["schedule"]["alpha_in"][3] *= 1 + 1e-9
    (run / "manifest.json").write_text(json.dumps(m, indent=2))
    with pytest.raises(ResultError, match="manifest_sha256"):
        verify_run(run)
    with pytest.raises(IncompleteStudyError):
        load_study(mini, expected=mini / "study.yaml", strict=True)


def test_a_nan_metric_in_a_resealed_run_is_refused_by_name(mini: Path) -> None:
    """wall_s set to NaN in a run's samples.parquet and the manifest re-sealed with the file's new hash: every
    hash verifies, and the analysis still refuses it, naming the file, the column and the fix."""
    import hashlib

    from analysis.loaders import NonFiniteMetricError

    run = mini / "runs" / "gmm" / "ddim-24" / TAA / "shard-0"
    df = pd.read_parquet(run / "samples.parquet")
    df.loc[1, "wall_s"] = np.nan
    df.to_parquet(run / "samples.parquet")
    m = json.loads((run / "manifest.json").read_text())
    entry = m["files"]["samples.parquet"]
    digest = hashlib.sha256((run / "samples.parquet").read_bytes()).hexdigest()
    m["files"]["samples.parquet"] = {**entry, "sha256": digest} if isinstance(entry, dict) else digest
    (run / "manifest.json").write_text(json.dumps(seal(m)))
    verify_run(run)  # the re-sealed run verifies
    with pytest.raises(NonFiniteMetricError, match=r"samples.parquet: column wall_s holds 1 NaN value\(s\)"):
        load_study(mini)


def test_each_run_is_scaled_by_its_own_schedule(mini: Path) -> None:
    """Two runs of one cell group with different schedules: each convergence row gets its own run's sigma_t."""
    run = mini / "runs" / "gmm" / "ddim-24" / TAA / "shard-0"
    m = json.loads((run / "manifest.json").read_text())
    m["schedule"]["sigma"] = [0.5] * len(m["schedule"]["sigma"])
    m["schedule"].pop("alpha_in")
    (run / "manifest.json").write_text(json.dumps(seal(m)))
    study = load_study(mini)
    conv = with_step_scales(study.convergence, study.step_scales)
    assert len(conv) == len(study.convergence)
    mine = conv["run"] == f"runs/gmm/ddim-24/{TAA}/shard-0"
    assert (conv.loc[mine, "sigma"] == 0.5).all() and (conv.loc[~mine, "sigma"] < 0.5).any()


def test_strict_names_every_missing_cell(mini: Path) -> None:
    shutil.rmtree(mini / "runs" / "gmm" / "ddim-24" / "taa_m3_k4_w24_tol1e-3")
    shutil.rmtree(mini / "runs" / "gmm" / "ddim-24" / "sequential" / "shard-1")
    assert load_study(mini).problems == []  # without the matrix nothing is known to be missing
    with pytest.raises(IncompleteStudyError) as e:
        load_study(mini, expected=mini / "study.yaml", strict=True)
    assert e.value.missing == [
        "model=gmm sampler=ddim steps=24 solver_tag=sequential: seeds [1] missing (runs/gmm/ddim-24/sequential/)",
        "model=gmm sampler=ddim steps=24 solver_tag=taa_m3_k4_w24_tol1e-3: no verified run "
        "(runs/gmm/ddim-24/taa_m3_k4_w24_tol1e-3/)",
    ]
    # a bigger matrix than stored: every absent cell is named, seeds too
    cfg = {
        "models": ["gmm"],
        "samplers": ["ddim", "ddpm"],
        "steps": [24],
        "seeds": "0-2",
        "solver_tags": ["sequential", TAA],
    }
    with pytest.raises(IncompleteStudyError) as e2:
        load_study(MINI, expected=cfg, strict=True)
    assert len(e2.value.missing) == 4 and all("ddpm" in m or "seeds [2] missing" in m for m in e2.value.missing)


def test_a_seed_stored_twice_is_refused_in_strict_mode(mini: Path) -> None:
    cell = mini / "runs" / "gmm" / "ddim-24" / TAA
    shutil.copytree(cell / "shard-0", cell / "shard-1")  # e.g. a requeued job written under another shard
    study = load_study(mini, expected=mini / "study.yaml")
    assert sum(p.startswith("seed stored twice") for p in study.problems) == 2
    with pytest.raises(IncompleteStudyError, match="seed stored twice"):
        load_study(mini, expected=mini / "study.yaml", strict=True)


def test_expected_matrix_of_workflow_configs() -> None:
    configs = sorted((ROOT / "config").glob("*.yaml")) + [CONFIG]
    assert configs
    for path in configs:
        import yaml

        cfg = yaml.safe_load(path.read_text())
        exp = expected_cells(path)
        parallel = [
            len(workflow_solver_tags(cfg, s, m["name"], sampler))
            for s in cfg["steps"]
            for m in cfg["models"]
            for sampler in cfg["samplers"]
        ]
        n_tags = sum(1 + n for n in parallel if n)  # a cell without parallel solvers has no baseline either
        assert len(exp) == n_tags * len(cfg["seeds"])
        from parataa.jobs import plan
        from parataa.jobs.config import validate_config

        assert len(exp) == plan.count(validate_config(cfg))["samples"]  # the workflow's own matrix


def test_grids_add_cells_only_where_they_say() -> None:
    cfg = {
        "models": ["tiny-dit", "tiny-sd"],
        "samplers": ["ddim", "ddpm"],
        "steps": [25, 50],
        "seeds": [0],
        "solvers": {"taa": {"history": 2}},
        "grids": [
            {"models": ["tiny-dit"], "samplers": ["ddim"], "steps": [25], "solvers": {"taa": {"history": [2, 3]}}},
            {"steps": [50], "solvers": {"fp": {}}},
        ],
    }
    exp = expected_cells(cfg)
    tags = exp.groupby(["model", "sampler", "steps"])["solver_tag"].apply(list)
    assert tags[("tiny-dit", "ddim", 25)] == ["sequential", "taa_m2_k25_w25_tol1e-3", "taa_m3_k25_w25_tol1e-3"]
    assert tags[("tiny-sd", "ddim", 25)] == ["sequential", "taa_m2_k25_w25_tol1e-3"]  # the m=2 point is one cell
    for model in ("tiny-dit", "tiny-sd"):
        for sampler in ("ddim", "ddpm"):
            assert tags[(model, sampler, 50)] == ["sequential", "taa_m2_k50_w50_tol1e-3", "fp_w50_tol1e-3"]


# ------------------------------------------------------------------------------------------------- tables


def test_summary_table_recomputed_by_hand() -> None:
    raw = _raw_samples()
    study = load_study(MINI)
    table = summary_table(study.samples).set_index("solver_tag")
    seq = raw[raw.solver_tag == "sequential"].set_index("seed")
    for tag in (TAA, "fpplus_k24_w8_tol1e-3"):
        cell = raw[raw.solver_tag == tag].set_index("seed").sort_index()
        its = [float(v) for v in cell["iterations"]]
        row = table.loc[tag]
        assert row["n_seeds"] == 2 and row["n_shards"] == 1
        assert row["iterations_mean"] == pytest.approx(statistics.mean(its))
        assert row["iterations_std"] == pytest.approx(statistics.stdev(its))
        assert row["nfe_mean"] == pytest.approx(statistics.mean(float(v) for v in cell["nfe"]))
        assert row["speedup_steps_mean"] == pytest.approx(statistics.mean(24 / i for i in its))
        # one shard: its samples shared one batched solve, so there is no spread to report
        sp = [seq.loc[s, "wall_s"] / cell.loc[s, "wall_s"] for s in (0, 1)]
        assert row["speedup_time_mean"] == pytest.approx(statistics.mean(sp))
        assert math.isnan(row["speedup_time_shard_std"]) and math.isnan(row["wall_s_shard_std"])
        assert row["err_max_mean"] == pytest.approx(statistics.mean(cell["err_max"]))
        assert row["err_max_max"] == pytest.approx(max(cell["err_max"]))
    # the sequential cell was stored in two shards of one seed each: the spread is over those shards
    s = table.loc["sequential"]
    assert s["n_shards"] == 2 and s["wall_s_shard_std"] == pytest.approx(statistics.stdev(seq["wall_s"]))
    assert "wall_s_std" not in table.columns and "speedup_time_std" not in table.columns
    # the distances are real: a parallel solve lands within ~tolerance of the sequential sample, FP exactly
    assert 0 < table.loc[TAA, "err_max_max"] < 1e-2
    assert table.loc["sequential", "speedup_steps_mean"] == 1.0


def test_recount_under_the_stored_threshold_reproduces_every_solve() -> None:
    study = load_study(MINI)
    rc = recount_steps(study.convergence, lambda df: df["threshold"].to_numpy())
    got = rc.set_index(["solver_tag", "seed"])["iterations"]
    want = study.samples.set_index(["solver_tag", "seed"])["iterations"].astype(float)
    assert len(got) == 16 and not rc["censored"].any()
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)
    # looser -> never more steps; much tighter -> censored (the logs do not say what would follow)
    loose = recount_steps(study.convergence, flat_rule(1e-1)).set_index(["solver_tag", "seed"])["iterations"]
    assert (loose.sort_index() <= want.sort_index()).all() and (loose < want.loc[loose.index]).any()
    tight = recount_steps(study.convergence, flat_rule(1e-6)).set_index("solver")
    assert tight.loc[["taa", "fp+"], "censored"].all()
    # FP finalised every state through the safeguard (one per iteration, exact): T under any threshold
    assert (tight.loc[["fp", "sequential"], "iterations"] == 24).all()
    # the table shows how many seeds are censored and leaves their cell's mean empty rather than averaging
    table, notes = recount_table(study.samples, study.convergence, [flat_rule(1e-6), flat_rule(1e-1)])
    t = table.set_index("solver_tag")
    assert (t.loc[TAA, "flat_1e-06_censored"] == 2) and math.isnan(t.loc[TAA, "flat_1e-06_mean"])
    assert t.loc["fp_w24_tol1e-3", "flat_1e-06_mean"] == 24 and t.loc["fp_w24_tol1e-3", "flat_1e-06_censored"] == 0
    assert (t.loc[t.index != "sequential", "flat_0.1_censored"] == 0).all() and t["flat_0.1_mean"].notna().all()
    assert any("have censored seeds (mean left empty)" in n for n in notes)


def _hand_log(rows: list[tuple[int, int, float, bool]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["iteration", "step", "rho", "converged"]).assign(
        seed=0, steps=3, solver="taa", solver_tag="t"
    )


def test_recount_by_hand() -> None:
    # T = 3, stored threshold 1e-3 (the solver's own log):
    #   it 0: rho (step 0, 1, 2) = .005 .002 .002, all fail -> u* = 2: step 2 finalised by the safeguard
    #   it 1: rho (0, 1) = .02 .02, both fail -> u* = 1: step 1 finalised
    #   it 2: rho (0) = 1e-4 passes -> done after 3 iterations
    log = _hand_log(
        [
            (0, 0, 5e-3, False),
            (0, 1, 2e-3, False),
            (0, 2, 2e-3, False),
            (1, 0, 2e-2, False),
            (1, 1, 2e-2, False),
            (2, 0, 1e-4, True),
        ]
    )

    def count(tol: float) -> float:
        return float(recount_steps(log, flat_rule(tol))["iterations"].iloc[0])

    assert count(1e-3) == 3  # the stored count
    # 0.01: every step passes at it 0, but steps 0 and 1 fail at it 1 (step 0 must stay converged: from it 2)
    assert count(1e-2) == 3
    assert count(5e-2) == 1  # everything passes from it 0 and stays so
    # 1e-5: step 0's last logged rho (1e-4) fails and it was not finalised by the safeguard: censored
    r = recount_steps(log, flat_rule(1e-5)).iloc[0]
    assert math.isnan(r["iterations"]) and r["censored"]
    # a pass below the highest failing step is stale (the solver updates it in that iteration)
    stale = _hand_log([(0, 0, 1e-4, True), (0, 1, 0.5, False), (0, 2, 1e-4, True), (1, 0, 1e-4, True)])
    assert float(recount_steps(stale, flat_rule(1e-3))["iterations"].iloc[0]) == 2
    # Picard stops on its own rule: not recounted
    pic = recount_steps(log.assign(solver="picard"), flat_rule(1e-3)).iloc[0]
    assert not pic["recounted"] and math.isnan(pic["iterations"])


def test_step_scales_and_paper_threshold() -> None:
    study = load_study(MINI)
    scales = study.step_scales
    assert set(scales["run"]) == {str(r.path.relative_to(MINI)) for r in study.runs}  # every run, its own schedule
    manifest = json.loads((CELL / TAA / "shard-0" / "manifest.json").read_text())
    taa = scales[scales["run"] == f"runs/gmm/ddim-24/{TAA}/shard-0"]
    np.testing.assert_allclose(taa["sigma"].to_numpy(), manifest["schedule"]["sigma"], rtol=1e-12, atol=1e-15)
    conv = with_step_scales(study.convergence, scales)
    thr = paper_rule(1e-3, "sigma")(conv)
    np.testing.assert_allclose(thr, 1e-3 * conv["sigma"].to_numpy())
    with pytest.raises(ValueError, match="needs the per-step column 'sigma'"):
        paper_rule()(study.convergence)
    assert parse_threshold("paper:tau=2e-3,g=beta").label == "paper_tau0.002_beta"
    assert parse_threshold("authors").label == "authors"
    assert parse_threshold("flat:1e-4").label == "flat_0.0001"
    for bad in ("paper:g=median", "paper:tau", "nonsense", "flat:x", "authors:foo=1"):
        with pytest.raises(ValueError):
            parse_threshold(bad)(conv)


# -------------------------------------------------------------------------------------------------- audit


@pytest.mark.parametrize(
    ("spec", "values", "verdict"),
    [
        ({"kind": "range", "low": 4, "high": 14, "rel_tol": 0.1}, [4.2, 13.0], REPRODUCED),
        ({"kind": "range", "low": 4, "high": 14, "rel_tol": 0.1}, [4.2, 2.0], NOT_REPRODUCED),
        ({"kind": "range", "low": 4, "high": 14}, [], NOT_MEASURABLE),
        ({"kind": "at_most", "value": 7, "abs_tol": 0.5}, [7.5], REPRODUCED),
        ({"kind": "at_most", "value": 7, "abs_tol": 0.5}, [7.6], NOT_REPRODUCED),
        ({"kind": "at_least", "value": 1.0}, [1.2, 3.0], REPRODUCED),
        ({"kind": "at_least", "value": 1.0}, [0.9], NOT_REPRODUCED),
        ({"kind": "sequence", "expected": {0: 16, 1: 15}, "abs_tol": 1}, {0: 17, 1: 15}, REPRODUCED),
        ({"kind": "sequence", "expected": {0: 16, 1: 15}, "abs_tol": 1}, {0: 18, 1: 15}, NOT_REPRODUCED),
        ({"kind": "sequence", "expected": {0: 16, 1: 15}, "abs_tol": 1}, {0: 16}, NOT_MEASURABLE),
        (
            {"kind": "fewer_than", "subject": "taa", "others": ["fp", "fp+"]},
            [{"taa": 5, "fp": 9, "fp+": 6}],
            REPRODUCED,
        ),
        (
            {"kind": "fewer_than", "subject": "taa", "others": ["fp", "fp+"]},
            [{"taa": 6, "fp": 9, "fp+": 6}],
            NOT_REPRODUCED,
        ),
        ({"kind": "fewer_than", "subject": "taa", "others": ["fp"]}, [{"taa": 6}], NOT_MEASURABLE),
        ({"kind": "ordering", "order": ["taa", "fp+", "fp"]}, [{"taa": 12, "fp+": 24, "fp": 84}], REPRODUCED),
        ({"kind": "ordering", "order": ["taa", "fp+", "fp"]}, [{"taa": 30, "fp+": 24, "fp": 84}], NOT_REPRODUCED),
        ({"kind": "setting", "reason": "setup"}, [1.0], NOT_MEASURABLE),
        ({"kind": "study"}, None, NOT_MEASURABLE),
    ],
)
def test_verdict_logic(spec: dict, values: object, verdict: str) -> None:
    v = decide(spec, values)
    assert v.verdict == verdict and v.reason


def _claim(cid: str) -> dict:
    return next(c for c in load_claims()["claims"] if c["id"] == cid)


def test_claims_file_covers_section_6() -> None:
    ids = {c["id"] for c in load_claims()["claims"]}
    assert {
        "steps-4-to-14x",
        "sd-ddim100-7-steps",
        "authors-sd-example-iterations",
        "models-and-hardware",
        "fewer-steps-than-fp",
        "window-size-study",
        "m-k-grid-search",
        "paper-setting",
        "authors-code-defaults",
        "gaussian-vs-copy-init",
        "paradigms-vs-taa",
        "euler-taa-vs-paradigms",
    } <= ids
    ex = _claim("authors-sd-example-iterations")
    assert list(ex["measure"]["expected"].values()) == [16, 15, 16, 18, 16, 13, 15, 17, 16, 16]
    assert "authors' public code" in ex["source"]
    for c in load_claims()["claims"]:
        assert c["command"].startswith("snakemake ")


def test_real_model_claims_are_never_decided_by_embedded_models() -> None:
    samples = load_study(MINI).samples
    v, measured = measure(_claim("fewer-steps-than-fp"), samples)
    assert v.verdict == NOT_MEASURABLE and "gmm" in v.reason and measured == "—"
    # the same numbers under a real model's name do decide it (taa needs fewer steps than fp and fp+ here)
    real = samples.assign(model="sd-v1-5")
    v2, measured2 = measure(_claim("fewer-steps-than-fp"), real)
    assert v2.verdict == REPRODUCED and "sd-v1-5/ddim-24" in measured2
    v3, _ = measure(_claim("steps-4-to-14x"), real)  # ~1.6x on 24 steps of the mixture
    assert v3.verdict == NOT_REPRODUCED


def test_gmm_reference_needs_its_setting_and_says_which() -> None:
    study = load_study(MINI)  # the mixture at DDIM-24; the claim is about DDIM-100
    _, st = study_settings(study)
    claim = _claim("gmm-reference-shape")
    v, _ = measure(claim, study.samples, st)
    assert v.verdict == NOT_APPLICABLE  # not a claim of the paper
    e = measure_embedded(claim, st)
    assert e.verdict.verdict == NOT_RUN and "no gmm DDIM-100 cell" in e.verdict.reason and not e.outcomes
    e2 = measure_embedded(claim, st.assign(steps=100))
    assert e2.verdict.verdict == REPRODUCED and all("gmm/ddim-100" in o.text for o in e2.outcomes)
    assert len(e2.outcomes) == 4  # taa < fp+ and fp+ < fp, at the stop and to 40 dB


# ------------------------------------------------------------------------------ audit: embedded verdicts


def _st(*rows: dict) -> pd.DataFrame:
    """A hand-made settings frame (the columns analysis.yardstick.settings gives), one dict per setting:
    solver, its (steps at the stop), to40 (steps to 40 dB; math.inf = a seed never got there) and options."""
    from analysis.labels import setting_label, variant_label
    from parataa.solver_config import preset, solver_tag

    out = []
    for r in rows:
        r = dict(r)
        name, steps = r.pop("solver"), r.pop("steps", 25)
        opts = {k: r.pop(k) for k in ("history", "order", "window", "init", "picard_tol") if k in r}
        cfg = preset(name, **opts).to_dict()
        to40 = float(r.pop("to40"))
        never = math.isinf(to40)
        tag = solver_tag(name, cfg, steps) + r.pop("tag_suffix", "")
        out.append(
            {
                "model": r.pop("model", "tiny-dit"),
                "sampler": r.pop("sampler", "ddim"),
                "steps": steps,
                "solver": name,
                "solver_tag": tag,
                "variant": variant_label(tag),
                "label": setting_label(tag, steps),
                "method": cfg["method"],
                "history": cfg["history"],
                "order": cfg["order"] or steps,
                "window": cfg["window"] or steps,
                "init": cfg["init"],
                "picard_tol": cfg["picard_tol"],
                "device": r.pop("device", "cpu"),
                "n_seeds": 3,
                "n_measured": 3,
                "its_stop_mean": float(r.pop("its")),
                "to_40db_mean": math.nan if never else to40,
                "n_censored_40db": 1 if never else 0,
                "speedup_to_40db": math.nan if never else steps / to40,
                "speedup_time": float(r.pop("speedup_time", math.nan)),
                **r,
            }
        )
    return pd.DataFrame(out)


def _verdict(cid: str, st: pd.DataFrame) -> str:
    return measure_embedded(_claim(cid), st).verdict.verdict


def test_embedded_verdicts_are_pure_and_both_ways() -> None:
    assert decide_embedded([]).verdict == NOT_RUN
    assert decide_embedded([], NOT_MEASURABLE, "why").reason == "why"
    yes, no = Outcome(True, "a"), Outcome(False, "b")
    assert decide_embedded([yes, yes]).verdict == REPRODUCED
    assert decide_embedded([no]).verdict == NOT_REPRODUCED
    assert decide_embedded([yes, no]) == Verdict(PARTLY, "holds in 1 of 2 comparison(s)")


def test_a_tie_at_the_ceiling_is_a_tie_not_a_failure() -> None:
    """m x k grid, order 1: plain fixed point (m = 1) and TAA (m = 2) both take T = 25 steps to 40 dB, the most a
    solve can take; "fewer" can neither hold nor fail there. A tie below the ceiling is still a failure."""
    rows = [
        {"solver": "taa", "history": 1, "order": 1, "its": 25, "to40": 25},
        {"solver": "taa", "history": 2, "order": 1, "its": 25, "to40": 25},
        {"solver": "taa", "history": 1, "order": 5, "its": 14, "to40": 12},
        {"solver": "taa", "history": 2, "order": 5, "its": 10, "to40": 8},
    ]
    e = measure_embedded(_claim("m-k-grid-search"), _st(*rows))
    ties = [o for o in e.outcomes if o.tie]
    assert len(ties) == 1 and "25 = " in ties[0].text and "a tie at the ceiling (T steps)" in ties[0].text
    assert ties[0].word == "tie"
    assert e.verdict.verdict == REPRODUCED and "1 tie(s) at the ceiling left out" in e.verdict.reason, e.verdict
    below = [{**r, "its": 20, "to40": 12} if r["order"] == 5 else r for r in rows]  # 12 = 12 at order 5: fails
    e = measure_embedded(_claim("m-k-grid-search"), _st(*below))
    assert e.verdict.verdict == PARTLY and any(not o.holds and not o.tie and "12 < " in o.text for o in e.outcomes)
    assert decide_embedded([Outcome(False, "t", tie=True)]).verdict == NOT_MEASURABLE


def test_claim_fewer_steps_than_fp_both_ways() -> None:
    fp, fpp = {"solver": "fp", "its": 25, "to40": 25}, {"solver": "fp+", "its": 15, "to40": 13}
    assert _verdict("fewer-steps-than-fp", _st(fp, fpp, {"solver": "taa", "its": 11, "to40": 9})) == REPRODUCED
    worse = _st(fp, fpp, {"solver": "taa", "its": 26, "to40": math.inf})
    assert _verdict("fewer-steps-than-fp", worse) == NOT_REPRODUCED
    mixed = _st(fp, fpp, {"solver": "taa", "its": 14, "to40": 14})  # fewer than FP, not than FP+ to 40 dB
    e = measure_embedded(_claim("fewer-steps-than-fp"), mixed)
    assert e.verdict == Verdict(PARTLY, "holds in 3 of 4 comparison(s)")
    assert any(not o.holds and "steps to 40 dB" in o.text and "FP+" in o.text for o in e.outcomes)
    # the best setting of each solver is compared; a copy-initialised TAA is not the paper's
    best = _st(fp, fpp, {"solver": "taa", "its": 20, "to40": 19}, {"solver": "taa", "history": 3, "its": 9, "to40": 8})
    assert _verdict("fewer-steps-than-fp", best) == REPRODUCED
    copy = _st(
        fp, fpp, {"solver": "taa", "its": 20, "to40": 19}, {"solver": "taa", "init": "copy", "its": 9, "to40": 8}
    )
    assert _verdict("fewer-steps-than-fp", copy) == PARTLY  # the Gaussian TAA beats FP, not FP+
    assert _verdict("fewer-steps-than-fp", _st(fp, fpp)) == NOT_RUN  # no TAA cell


def test_claim_4_to_14x_both_ways() -> None:
    assert _verdict("steps-4-to-14x", _st({"solver": "taa", "steps": 50, "its": 12, "to40": 10})) == REPRODUCED
    assert _verdict("steps-4-to-14x", _st({"solver": "taa", "steps": 50, "its": 26, "to40": 25})) == NOT_REPRODUCED
    two = _st(
        {"solver": "taa", "steps": 50, "its": 12, "to40": 10}, {"solver": "taa", "steps": 25, "its": 12, "to40": 12}
    )
    assert _verdict("steps-4-to-14x", two) == PARTLY


def test_claim_ddim100_in_7_both_ways() -> None:
    cell = {"solver": "taa", "steps": 100, "sampler": "ddim"}
    assert _verdict("sd-ddim100-7-steps", _st({**cell, "its": 9, "to40": 7.4})) == REPRODUCED
    assert _verdict("sd-ddim100-7-steps", _st({**cell, "its": 14, "to40": 12})) == NOT_REPRODUCED
    e = measure_embedded(_claim("sd-ddim100-7-steps"), _st({**cell, "steps": 50, "its": 9, "to40": 7}))
    assert e.verdict.verdict == NOT_RUN and "no DDIM-100 cell" in e.verdict.reason


def test_claim_window_study_both_ways() -> None:
    def study(w5: float, w10: float, wt: float) -> pd.DataFrame:
        return _st(
            {"solver": "fp+", "window": 5, "its": w5 + 2, "to40": w5},
            {"solver": "fp+", "window": 10, "its": w10 + 2, "to40": w10},
            {"solver": "fp+", "its": wt + 2, "to40": wt},
            {"solver": "taa", "its": 12, "to40": 10},  # one window only: not a series
        )

    assert _verdict("window-size-study", study(20, 15, 12)) == REPRODUCED
    assert _verdict("window-size-study", study(12, 12.4, 12)) == REPRODUCED  # within half a step
    e = measure_embedded(_claim("window-size-study"), study(10, 15, 12))
    assert e.verdict.verdict == NOT_REPRODUCED and "rises from 5 to 10" in e.outcomes[0].text
    assert "FP+ [k=T tol 1e-3], steps to 40 dB vs W: W=5: 10, W=10: 15, W=T: 12" in e.outcomes[0].text
    assert _verdict("window-size-study", _st({"solver": "fp+", "its": 12, "to40": 10})) == NOT_RUN
    # two settings that differ in an option other than W (Picard's tolerance, as config/paper.yaml runs it) are two
    # series: each falls as W grows, though the looser one at W = T is below the tighter one at W = 5
    picard = _st(
        {"solver": "picard", "picard_tol": 0.1, "window": 5, "its": 9, "to40": 8},
        {"solver": "picard", "picard_tol": 0.1, "its": 8, "to40": 7},
        {"solver": "picard", "picard_tol": 0.05, "window": 5, "its": 13, "to40": 12},
        {"solver": "picard", "picard_tol": 0.05, "its": 12, "to40": 11},
    )
    assert _verdict("window-size-study", picard) == REPRODUCED


def test_claim_m_k_grid_both_ways() -> None:
    def grid(v: dict[tuple[int, int | None], float]) -> pd.DataFrame:
        return _st(*({"solver": "taa", "history": m, "order": k, "its": x + 2, "to40": x} for (m, k), x in v.items()))

    good = grid({(1, 1): 25, (1, 5): 18, (1, None): 15, (2, 1): 24, (2, 5): 12, (2, None): 10, (3, None): 11})
    assert _verdict("m-k-grid-search", good) == REPRODUCED
    bad = grid({(1, 1): 10, (1, None): 15, (2, 1): 11, (2, None): 16})  # higher k worse, m = 2 worse
    assert _verdict("m-k-grid-search", bad) == NOT_REPRODUCED
    e = measure_embedded(_claim("m-k-grid-search"), grid({(1, 1): 25, (1, None): 15, (2, 1): 26, (2, None): 10}))
    assert e.verdict.verdict == PARTLY  # k helps for both m; m = 2 helps at k = T, not at k = 1
    assert [o.holds for o in e.outcomes] == [True, True, False, True]
    assert _verdict("m-k-grid-search", _st({"solver": "taa", "its": 12, "to40": 10})) == NOT_RUN


def test_claim_gaussian_vs_copy_both_ways() -> None:
    def pair(gauss: float, copy: float) -> pd.DataFrame:
        return _st(
            {"solver": "taa", "its": gauss + 2, "to40": gauss},
            {"solver": "taa", "init": "copy", "its": copy + 2, "to40": copy},
            {"solver": "picard", "its": 9, "to40": 8},  # always copies: no pair
        )

    assert _verdict("gaussian-vs-copy-init", pair(15, 12)) == REPRODUCED
    assert _verdict("gaussian-vs-copy-init", pair(15, 15)) == REPRODUCED  # no more steps
    assert _verdict("gaussian-vs-copy-init", pair(12, 15)) == NOT_REPRODUCED
    # settings are paired by solver and options: a copy-initialised m = 3 is not compared with a Gaussian m = 2
    apart = _st(
        {"solver": "taa", "its": 14, "to40": 12}, {"solver": "taa", "history": 3, "init": "copy", "its": 9, "to40": 8}
    )
    assert _verdict("gaussian-vs-copy-init", apart) == NOT_RUN


def test_claim_paradigms_vs_taa_both_ways() -> None:
    taa = {"solver": "taa", "its": 14, "to40": 12}
    assert _verdict("paradigms-vs-taa", _st(taa, {"solver": "picard", "its": 9, "to40": 8})) == REPRODUCED
    assert _verdict("paradigms-vs-taa", _st(taa, {"solver": "picard", "its": 15, "to40": 14})) == NOT_REPRODUCED
    assert _verdict("paradigms-vs-taa", _st(taa)) == NOT_RUN


def test_claim_euler_taa_both_ways() -> None:
    picard = {"solver": "picard", "its": 9, "to40": 8}
    euler = {"solver": "taa", "splitting": "euler", "tag_suffix": "_euler"}
    assert _verdict("euler-taa-vs-paradigms", _st(picard, {**euler, "its": 8, "to40": 7})) == REPRODUCED
    assert _verdict("euler-taa-vs-paradigms", _st(picard, {**euler, "its": 12, "to40": 10})) == NOT_REPRODUCED
    # before the option existed no run has the column: the paper's TAA is not taken for the Euler one
    e = measure_embedded(_claim("euler-taa-vs-paradigms"), _st(picard, {"solver": "taa", "its": 8, "to40": 6}))
    assert e.verdict.verdict == NOT_RUN and "Euler splitting" in e.verdict.reason
    # ... and the exact-splitting claims still find runs stored without the column (`splitting: [exact, null]`)
    assert _verdict("paradigms-vs-taa", _st(picard, {"solver": "taa", "its": 14, "to40": 12})) == REPRODUCED
    mixed = _st(picard, {**euler, "its": 8, "to40": 7}, {"solver": "taa", "splitting": "exact", "its": 14, "to40": 12})
    assert _verdict("paradigms-vs-taa", mixed) == REPRODUCED  # the Euler TAA is not the paper's


def test_claim_wall_clock_needs_a_gpu() -> None:
    cpu = _st({"solver": "taa", "its": 12, "to40": 10, "speedup_time": 0.3})
    e = measure_embedded(_claim("faster-wall-clock"), cpu)
    assert e.verdict.verdict == NOT_MEASURABLE and "CPU" in e.verdict.reason
    gpu = {"solver": "taa", "its": 12, "to40": 10, "device": "NVIDIA H200"}
    assert _verdict("faster-wall-clock", _st({**gpu, "speedup_time": 1.4})) == REPRODUCED
    assert _verdict("faster-wall-clock", _st({**gpu, "speedup_time": 0.8})) == NOT_REPRODUCED


def test_setting_claims_are_not_applicable_on_embedded_models() -> None:
    st = _st({"solver": "taa", "its": 12, "to40": 10})
    for cid in ("models-and-hardware", "paper-setting", "authors-code-defaults", "authors-sd-example-iterations"):
        assert _verdict(cid, st) == NOT_APPLICABLE


def test_the_two_verdicts_are_never_mixed() -> None:
    """Real-model runs decide the paper verdict only; embedded runs the embedded verdict only."""
    window = [
        {"solver": "fp+", "window": 5, "its": 22, "to40": 20},
        {"solver": "fp+", "its": 14, "to40": 12},
    ]
    real = _st(*({**r, "model": "dit-xl-2-256"} for r in window))
    results, _ = audit(pd.DataFrame(), real)
    r = next(r for r in results if r.claim["id"] == "window-size-study")
    assert r.verdict.verdict == REPRODUCED and "dit-xl-2-256" in r.measured
    assert r.embedded.verdict.verdict == NOT_RUN
    emb = _st(*window)
    results, _ = audit(pd.DataFrame(), emb)
    r = next(r for r in results if r.claim["id"] == "window-size-study")
    assert r.verdict.verdict == NOT_MEASURABLE and r.embedded.verdict.verdict == REPRODUCED


def test_runs_on_synthetic_weights_never_decide_a_paper_claim() -> None:
    """Full-size random-weight checkpoints (parataa.models.synthetic) exercise the real-model path; the audit
    measures nothing of the paper on them and says why."""
    window = [
        {"solver": "fp+", "window": 5, "its": 22, "to40": 20},
        {"solver": "fp+", "its": 14, "to40": 12},
    ]
    fake = _st(*({**r, "model": "dit-xl-2-256", "synthetic_weights": True} for r in window))
    results, _ = audit(pd.DataFrame(), fake)
    r = next(r for r in results if r.claim["id"] == "window-size-study")
    assert r.verdict.verdict == NOT_MEASURABLE and "synthetic" in r.verdict.reason
    real = _st(*({**r, "model": "dit-xl-2-256", "synthetic_weights": False} for r in window))
    results, _ = audit(pd.DataFrame(), real)
    assert next(r for r in results if r.claim["id"] == "window-size-study").verdict.verdict == REPRODUCED


def test_samples_say_whether_their_weights_were_synthetic() -> None:
    assert not load_study(MINI).samples["synthetic_weights"].any()


# ------------------------------------------------------------------------------------------------ figures


def test_figures_missing_inputs_say_why(tmp_path: Path) -> None:
    study = load_study(MINI)
    notes: list[str] = []
    assert speedup_vs_gpus(study, tmp_path, notes) == []
    assert "world_size [1]" in notes[0]
    seq_only = study.samples[study.samples.solver == "sequential"]
    study.__dict__["samples"] = seq_only  # a study without window or m x k variation
    assert window_study(study, tmp_path, notes) == [] and history_order_grid(study, tmp_path, notes) == []
    assert len(notes) == 3 and not list(tmp_path.iterdir())


def test_speedup_vs_gpus_with_several_world_sizes(tmp_path: Path) -> None:
    s = load_study(MINI).samples
    par = s[s.solver == "taa"]
    two = par.assign(world_size=2, wall_s=par["wall_s"] / 1.8)
    paths = speedup_vs_gpus(pd.concat([s, two]), tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 5000 for p in paths)


def test_residual_figure_only_for_solvers_stopping_on_it() -> None:
    study = load_study(MINI)
    conv = study.convergence
    ok, other = first_order_tags(conv, study.solver_settings)
    assert ok == set(conv["solver_tag"]) and not other
    assert first_order_tags(conv) == (ok, other)  # the same read from the logs alone
    # Picard logs the first-order residual but accepts steps by its own rule; so does the summed-residual rule
    pic = conv[conv.solver_tag == TAA].assign(solver="picard", solver_tag="picard_w24_ptol1e-1")
    summed = conv[conv.solver_tag == TAA].assign(solver_tag="taa_m2_k24_w24_sum4e-2")
    summed["converged"] = summed["rho"] <= 4e-2 / 24 * 10  # accepted above its per-step share
    both = pd.concat([conv, pic, summed])
    assert first_order_tags(both)[1] == {"picard_w24_ptol1e-1", "taa_m2_k24_w24_sum4e-2"}
    settings = pd.concat(
        [
            study.solver_settings,
            pd.DataFrame([{"solver_tag": "picard_w24_ptol1e-1", "method": "picard", "stop": "step"}]),
            pd.DataFrame([{"solver_tag": "taa_m2_k24_w24_sum4e-2", "method": "taa", "stop": "sum"}]),
        ]
    )
    assert first_order_tags(both, settings)[1] == {"picard_w24_ptol1e-1", "taa_m2_k24_w24_sum4e-2"}
    rc = recount_steps(both, flat_rule(1e-3), settings).set_index("solver_tag")
    assert not rc.loc[["picard_w24_ptol1e-1", "taa_m2_k24_w24_sum4e-2"], "recounted"].any()
    assert rc.loc[TAA, "recounted"].all()


def test_labels_from_tags() -> None:
    from analysis.labels import palette, parse_tag, setting_label, solver_order, variant_label
    from parataa.solver_config import PRESETS, preset, solver_tag

    for name in PRESETS:  # every preset's tag reads back as that solver, whatever its spelling
        tag = solver_tag(name, preset(name).to_dict(), 50)
        assert parse_tag(tag).solver == name and variant_label(tag).split(" (")[0] != ""
    assert setting_label("taa_m2_k50_w50_tol1e-3", 50) == "TAA m=2 k=T W=T tol 1e-3"
    assert variant_label("fpplus_k25_w8_tol1e-3_initcopy") == "FP+ (copy init)"
    assert setting_label("picard_w50_ptol1e-1", 50) == "ParaDiGMS (Picard) W=T tol 1e-1"
    # an option this checkout does not know stays in the name (its runs stay apart); a new preset keeps its name
    assert variant_label("taa_m3_k50_w50_tol1e-3_eulerx") == "TAA (eulerx)"
    assert variant_label("newsolver_m3_k50_w50_tol1e-3") == "newsolver"
    labels = ["ParaDiGMS (Picard)", "TAA (copy init)", "FP", "TAA", "FP+"]
    assert solver_order(labels) == ["FP", "FP+", "TAA", "TAA (copy init)", "ParaDiGMS (Picard)"]
    assert palette(labels) == palette(list(reversed(labels)))


# ----------------------------------------------------------------------------------- fidelity, yardstick


def _without_fidelity_parquet(root: Path) -> None:
    """Runs as stored before the jobs wrote fidelity.parquet: the file gone and unlisted, the manifest re-sealed."""
    for m in root.glob("runs/*/*/*/shard-*/manifest.json"):
        d = json.loads(m.read_text())
        if d["files"].pop("fidelity.parquet", None) is not None:
            (m.parent / "fidelity.parquet").unlink()
            m.write_text(json.dumps(seal(d)))


def test_fidelity_is_read_from_every_parallel_run() -> None:
    study = load_study(MINI)
    df = study.fidelity
    assert set(df["source"]) == {"fidelity.parquet"}
    assert set(df["solver_tag"]) == set(study.samples.solver_tag) - {"sequential"}
    last = df.sort_values("iteration").groupby(["solver_tag", "seed"]).tail(1).set_index(["solver_tag", "seed"])
    stored = _raw_samples().set_index(["solver_tag", "seed"])
    # the last row is the stored sample: its distance is the stored one, and it comes at the stored stop
    np.testing.assert_allclose(last["err_max"], stored.loc[last.index, "err_max"], rtol=1e-12, atol=0)
    assert (last["iteration"].to_numpy() == stored.loc[last.index, "iterations"].to_numpy()).all()
    assert df["image_psnr_db"].isna().all()  # the mixture's state is not an image
    rms = df["err_rms"].to_numpy()
    with np.errstate(divide="ignore"):  # FP ends on the sequential x0 itself: +inf dB
        np.testing.assert_allclose(df["psnr_db"], 10 * np.log10(4 / rms**2), rtol=1e-12)


def test_older_runs_fall_back_to_the_iterates_and_agree(mini: Path) -> None:
    """Runs stored without fidelity.parquet: the fidelity is derived from iterates.safetensors (x0 of every
    iteration, float32) against the sequential x0, and gives the same yardstick as the jobs' own table."""
    _without_fidelity_parquet(mini)
    old = load_study(mini)
    derived = old.fidelity
    assert set(derived["source"]) == {"iterates.safetensors"}
    written = load_study(MINI).fidelity
    both = written.merge(derived, on=["solver_tag", "seed", "iteration"], suffixes=("", "_it"))
    assert len(both) == len(written) == len(derived)
    # float32 iterates against float64 states: each element off by at most one rounding of the iterate, whose
    # size is at most the sequential x0's (the mixture's stay below 4) plus the distance; so is the RMS distance,
    # and the PSNR by at most 20 log10(e) * rounding / RMS distance to first order (factor 2: second order)
    u = np.finfo(np.float32).eps / 2
    rounding = u * (4 + both["err_max"].to_numpy())
    assert (np.abs(both["err_max"] - both["err_max_it"]).to_numpy() <= rounding).all()
    assert (np.abs(both["err_rms"] - both["err_rms_it"]).to_numpy() <= rounding).all()
    finite = np.isfinite(both["psnr_db"]).to_numpy()
    bound = 2 * 20 * np.log10(np.e) * rounding[finite] / both["err_rms"].to_numpy()[finite]
    assert (np.abs(both["psnr_db"] - both["psnr_db_it"]).to_numpy()[finite] <= bound).all()
    cols = ["solver_tag", "seed", "to_30db", "to_40db", "to_50db"]
    pd.testing.assert_frame_equal(study_settings(old)[0][cols], study_settings(load_study(MINI))[0][cols])
    # a run with neither has no fidelity rows: its seeds are "not measured", not censored
    run = mini / "runs" / "gmm" / "ddim-24" / TAA / "shard-0"
    d = json.loads((run / "manifest.json").read_text())
    d["files"].pop("iterates.safetensors")
    (run / "manifest.json").write_text(json.dumps(seal(d)))
    ps, st = study_settings(load_study(mini))
    row = st.set_index("solver_tag").loc[TAA]
    assert row["n_measured"] == 0 and row["n_censored_40db"] == 0 and math.isnan(row["to_40db_mean"])


def _fid(rows: dict[int, list[float]], tag: str = TAA) -> pd.DataFrame:
    """Hand-made fidelity rows: seed -> PSNR (dB) after iterations 1, 2, ..."""
    out = []
    for seed, dbs in rows.items():
        for i, db in enumerate(dbs):
            out.append({"model": "gmm", "sampler": "ddim", "steps": 24, "solver": "taa", "solver_tag": tag,
                        "seed": seed, "iteration": i + 1, "psnr_db": db})  # fmt: skip
    return pd.DataFrame(out)


def test_iterations_to_db_by_hand() -> None:
    fid = _fid({0: [5, 35, 41, 39, 52], 1: [10, 20, 30, 31], 2: [45]})
    to40 = iterations_to_db(fid, 40).reset_index().set_index("seed")["to_40db"]
    assert to40[0] == 3 and math.isnan(to40[1]) and to40[2] == 1  # the first crossing, not the last
    assert iterations_to_db(fid, 30).reset_index().set_index("seed")["to_30db"].tolist() == [2, 3, 1]


def test_yardstick_counts_censored_seeds_and_never_averages_them() -> None:
    samples = _raw_samples()
    taa = samples[samples.solver_tag == TAA].copy()
    fid = _fid({0: [5, 35, 41], 1: [10, 20, 30]})  # seed 1 never reaches 40 dB
    ps = per_seed(taa, fid)
    assert ps.set_index("seed")["censored_40db"].tolist() == [False, True]
    st = settings(ps).iloc[0]
    assert st["n_censored_40db"] == 1 and math.isnan(st["to_40db_mean"]) and math.isnan(st["to_40db_max"])
    assert st["to_30db_mean"] == 2.5 and st["n_censored_30db"] == 0
    assert st["psnr_stop_min_db"] == pytest.approx(float((10 * np.log10(4 / taa["err_rms"] ** 2)).min()))
    _, text = paper_table(settings(ps))
    assert text.loc[0, "steps to 40 dB (mean / max)"] == "never in 1 of 2 seeds"
    # a seed without fidelity rows is not measured (not censored)
    ps1 = per_seed(taa, _fid({0: [5, 35, 41]}))
    st1 = settings(ps1).iloc[0]
    assert st1["n_measured"] == 1 and st1["n_censored_40db"] == 0 and st1["to_40db_mean"] == 3


def test_paper_table_picks_each_solvers_best_setting() -> None:
    study = load_study(MINI)
    _, st = study_settings(study)
    numbers, text = paper_table(st)
    assert list(text["solver"]) == ["FP", "FP+", "TAA"]
    by = st.set_index("solver_tag")
    for r in numbers.itertuples():
        same = st[st["variant"] == r.variant]
        assert r.to_40db_mean == same["to_40db_mean"].min()  # the fewest mean steps to 40 dB
        assert r.speedup_to_40db == pytest.approx(24 / by.loc[r.solver_tag, "to_40db_mean"])
    assert text.loc[0, "PSNR at stop, min (dB)"] == "exact"  # FP from Gaussian states ends on the sequential x0


# ------------------------------------------------------------------------------------------------ reports

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _broken_links(md: Path) -> list[str]:
    text = md.read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        if path and not (md.parent / path).is_file():
            bad.append(target)
        if not path and anchor not in anchors:
            bad.append(target)
    return bad


@pytest.mark.parametrize("layout", ["figures inside the report folder", "workflow layout"])
def test_every_relative_link_of_the_audit_resolves(tmp_path: Path, layout: str) -> None:
    from analysis.__main__ import main

    out = tmp_path / "reports" / "mini"
    figs = out / "figures" if layout.startswith("figures inside") else tmp_path / "figures" / "mini"
    args = ["--results", str(MINI), "--out", str(out), "--figures-dir", str(figs), "--config", str(CONFIG)]
    for part in ("tables", "figures", "audit"):  # as the workflow's three rules do
        assert main([*args, "--strict", "--only", part]) == 0
    md = out / "audit.md"
    links = LINK.findall(md.read_text())
    assert sum(t.endswith(".png") for t in links) >= 5 and sum(t.startswith("#") for t in links) >= 10
    assert _broken_links(md) == []
    if layout == "workflow layout":
        assert "](../../figures/mini/steps_to_sequential.png)" in md.read_text()
    # an audit made alone quotes why a figure is missing, from the figures folder's index
    assert "Figure `speedup_vs_gpus` was not made: all parallel runs used world_size [1]" in md.read_text()


@pytest.mark.slow
def test_snakemake_report_holds_the_study(tmp_path: Path) -> None:
    """`snakemake --report` after a (tiny) study: one HTML page with the tables, the figures and the audit."""
    import yaml

    cfg = {
        "study": "reportcheck",
        "models": [{"name": "gmm", "cfg_scale": 5.0, "conditions": [0, 1], "options": {"dim": 8, "classes": 2}}],
        "samplers": ["ddim"],
        "steps": [8],
        "seeds": [0, 1],
        "seeds_per_shard": 2,
        "solvers": {"fp+": {}, "taa": {"history": 2}, "picard": {}},
        "save_iterates": 2,
        "progress": False,
    }
    config = tmp_path / "reportcheck.yaml"
    config.write_text(yaml.safe_dump(cfg))
    snakemake = [sys.executable, "-m", "snakemake", "--profile", "local", "--configfile", str(config), "--config"]
    snakemake += [
        f"results_dir={tmp_path}/results",
        f"reports_dir={tmp_path}/reports",
        f"figures_dir={tmp_path}/figures",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(snakemake, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    page = tmp_path / "report.html"
    rep = subprocess.run([*snakemake, "--report", str(page)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, (rep.stdout + rep.stderr)[-4000:]
    assert "Warning" not in rep.stdout + rep.stderr, (rep.stdout + rep.stderr)[-4000:]  # e.g. input sizes read
    html = page.read_text()
    assert page.stat().st_size > 100_000
    for item in ("steps_to_sequential.png", "fidelity_vs_iteration.png", "paper_table.csv", "audit.html"):
        assert item in html, item
    assert "The ParaTAA reproducibility study" in html  # workflow/report/workflow.rst
    assert "The headline." in html  # a figure's caption (workflow/report/figures.rst)


def test_one_analysis_run_builds_the_yardstick_frames_once(tmp_path: Path, monkeypatch) -> None:
    """Tables, figures and the audit of one `python -m analysis` read the same per-seed frame, built once."""
    import analysis.yardstick as Y
    from analysis.__main__ import main

    calls = []
    real = Y.per_seed

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(Y, "per_seed", counted)
    assert main(["--results", str(MINI), "--out", str(tmp_path / "out"), "--config", str(CONFIG)]) == 0
    assert len(calls) == 1 and (tmp_path / "out" / "audit.md").is_file()
    assert (tmp_path / "out" / "figures" / "index.json").is_file()


@pytest.mark.parametrize(
    "cid, sampler, steps, limit",
    [("dpmpp-2m-25-taa-euler", "dpmpp-2m", 25, 8), ("flow-euler-50-taa-euler", "flow-euler", 50, 10)],
)
def test_sampler_family_claims_need_the_bound_and_1_5x_fewer_than_picard(cid, sampler, steps, limit) -> None:
    """One claim per sampler family beyond the paper: TAA-Euler within `limit` steps to 40 dB and at least 1.5x
    fewer than ParaDiGMS, decided only on that family's cell (a DDIM cell of the same numbers is not counted)."""
    model = "tiny-flow" if sampler == "flow-euler" else "tiny-dit"

    def cell(taa: float, picard: float, s: str = sampler) -> list[dict]:
        return [
            {"solver": "taa-euler", "model": model, "sampler": s, "steps": steps, "its": taa + 1, "to40": taa},
            {"solver": "picard", "model": model, "sampler": s, "steps": steps, "its": picard + 1, "to40": picard},
        ]

    assert _verdict(cid, _st(*cell(limit, 1.5 * limit))) == REPRODUCED  # both bounds met exactly
    assert _verdict(cid, _st(*cell(limit + 1, 3 * limit))) == PARTLY  # 1.5x fewer, but past the bound
    assert _verdict(cid, _st(*cell(limit, 1.5 * limit - 0.5))) == PARTLY  # within the bound, < 1.5x fewer
    assert _verdict(cid, _st(*cell(limit + 1, limit + 2))) == NOT_REPRODUCED
    assert _verdict(cid, _st(*cell(limit, math.inf))) == REPRODUCED  # ParaDiGMS never got there
    assert _verdict(cid, _st(*cell(2, 20, s="ddim" if sampler == "dpmpp-2m" else "ddpm"))) == NOT_RUN
    # the DDIM/DDPM findings do not count these cells: TAA-Euler worse than ParaDiGMS here changes nothing there
    assert _verdict("euler-taa-vs-paradigms", _st(*cell(limit + 5, limit))) == NOT_RUN


def test_a_fewer_than_factor_below_one_is_refused() -> None:
    check = {"kind": "fewer_than", "subject": {"solver": "taa-euler"}, "others": [{"solver": "picard"}],
             "metrics": ["to_40db_mean"], "factor": 0.5}  # fmt: skip
    st = _st({"solver": "taa-euler", "its": 8, "to40": 7}, {"solver": "picard", "its": 12, "to40": 11})
    with pytest.raises(ValueError, match="factor must be a finite number >= 1"):
        run_check(check, st)
