"""The validation suite (benchmarks/validation.py, validation_report.py): its cells keep tuning and validation
apart, and a run on the analytic model gives the lines and tables the report promises."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from parataa.stopping import TARGET_RESID_FACTOR

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import validation  # noqa: E402
import validation_report  # noqa: E402


def test_the_cells_keep_tuning_and_validation_apart():
    spec = yaml.safe_load(validation.CELLS.read_text())
    for size in ("quick", "full"):
        tuning = validation.expand("tuning", spec["tuning"], size)
        checked = validation.expand("validation", spec["validation"], size)
        assert tuning and checked
        # tuning: guidance 5, seeds 0-7 (docs/METHOD.md section 9); validation: never a tuning seed
        assert all(c["cfg"] == 5.0 and max(c["seeds"]) < 8 for c in tuning)
        assert all(min(c["seeds"]) >= 1000 for c in checked)
        assert not {(c["model"], s) for c in tuning for s in c["seeds"]} & {
            (c["model"], s) for c in checked for s in c["seeds"]
        }
    full = validation.expand("validation", spec["validation"], "full")
    assert {c["dtype"] for c in full} == {"float32", "bfloat16", "float16"}
    assert {c["steps"] for c in full} >= {25, 50, 100, 500, 1000}
    assert min(c["cfg"] for c in full) <= 1.5 and max(c["cfg"] for c in full) >= 9.0


def test_a_run_on_the_analytic_model_reports_lateness_and_the_rules_signals(tmp_path):
    cells = tmp_path / "cells.yaml"
    group = {"models": ["gmm"], "samplers": ["ddpm"], "steps": [20], "dtypes": ["float32"], "quick": True,
             "conditions": {"gmm": [0, 1]}}
    cells.write_text(yaml.safe_dump({"tuning": [dict(group, cfg=[5.0], seeds=[0, 1])],
                                     "validation": [dict(group, cfg=[2.0], seeds=[1000, 1001])]}))
    out = tmp_path / "v.jsonl"
    assert validation.main(["--out", str(out), "--cells", str(cells), "--device", "cpu",
                            "--solvers", "target40,picard"]) == 0
    recs = validation_report.load(out)
    assert [(r["part"], r["solver"]) for r in recs] == [
        ("tuning", "target40"), ("tuning", "picard"), ("tuning", "taa-euler nostop"), ("tuning", "picard nostop"),
        ("validation", "target40"), ("validation", "picard"),
    ]
    for r in recs:
        for s in range(2):
            # one row per iteration the sample was solved in, its last one the stop
            assert len(r["psnr"][s]) == len(r["dx0"][s]) == len(r["states"][s]) == r["iterations"][s]
            assert r["psnr"][s][-1] == min(round(r["psnr_stop"][s], 3), 999.0)
            assert sum(r["states"][s]) == r["nfe"][s]  # the states the model evaluated for this sample
        if r["solver"] == "target40":
            tol, k_res = 2.0 * 10 ** (-40 / 20), TARGET_RESID_FACTOR
            # the rule stopped at the first iteration whose x0 change was within the target's RMS and whose
            # summed residual (of the iterate before the update) was within its factor of it
            for d, rs in zip(r["dx0"], r["rsum"], strict=True):
                ok = [v <= tol and w <= k_res * tol for v, w in zip(d, rs, strict=True)]
                assert ok[-1] and not any(ok[:-1])
    # the replay of the rule on the nostop curves stops where the rule did (same iterates until the stop)
    nostop = next(r for r in recs if r["solver"] == "taa-euler nostop")
    rule = next(r for r in recs if r["solver"] == "target40" and r["part"] == "tuning")
    for s in range(2):
        d, rs = nostop["dx0"][s], nostop["rsum"][s]
        k = next(i for i in range(len(d)) if d[i] <= 0.02 and rs[i] <= TARGET_RESID_FACTOR * 0.02)
        assert k + 1 == rule["iterations"][s]
    line = f"| {TARGET_RESID_FACTOR:g} | 2 | 0 |"  # the replay table's row of the rule's factor: 2 solves, 0 below
    assert line in validation_report.resid_replay([nostop], 40.0, [TARGET_RESID_FACTOR])
    # change-only: the stop replayed at the first x0 change within tol, never after the rule's own stop
    alone = validation_report.change_only(rule, 40.0)
    for s in range(2):
        k = alone["iterations"][s]
        assert rule["dx0"][s][k - 1] <= 0.02 and all(v > 0.02 for v in rule["dx0"][s][: k - 1])
        assert k <= rule["iterations"][s] and alone["psnr_stop"][s] == rule["psnr"][s][k - 1]
    text = validation_report.report(recs, 40.0)
    assert "Tuning cells" in text and "Validation cells" in text and "nostop" not in text
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nbefore\n")
    validation_report.main([str(out), "--write", str(doc)])
    validation_report.main([str(out), "--write", str(doc)])  # replaces its section, never appends a second
    assert doc.read_text().count(validation_report.BEGIN) == 1 and "before" in doc.read_text()
    json.dumps(recs)  # the lines are plain JSON


def test_regenerating_results_keeps_the_sections_other_scripts_wrote(tmp_path) -> None:
    """benchmarks/report.py rewrites RESULTS.md from the JSON files; the sections validation_report.py wrote
    between markers are not among them and must survive (they were lost before)."""
    import report

    out = tmp_path / "RESULTS.md"
    block = "<!-- fresh-validation:begin -->\n## A section\n\n| a |\n<!-- fresh-validation:end -->"
    out.write_text(f"# Benchmark results\n\n<!-- validation:begin -->\nold\n<!-- validation:end -->\n\n{block}\n")
    new = "# Benchmark results\n\n<!-- validation:begin -->\nnew\n<!-- validation:end -->\n"
    assert report.kept_sections(out, new) == [block]
    assert report.kept_sections(out, new + block) == []
    assert report.kept_sections(tmp_path / "absent.md", new) == []
