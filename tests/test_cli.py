"""The command line as a new user and a hostile one meet it: bounded seed ranges, a finite --fidelity-db, the
chunk size and every seed's condition in compare's output, tiny-sd's digit shorthand, progress bars that count
iterations, silent loading under --quiet, the top-level help, and the weights identity in sample's summary."""

from __future__ import annotations

import hashlib
import json
import re
import tracemalloc
from pathlib import Path

import pytest

from parataa.cli import build_parser, main
from parataa.cli._checks import SEEDS_MAX, parse_seeds
from parataa.cli.compare import _conditions, condition_texts
from parataa.models.embedded import digit_prompt

GMM = ["--model", "gmm", "--dim", "16", "--steps", "20"]


def _refused(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("seeds", ["0-99999999999", f"0-{SEEDS_MAX}", f"5,0-{SEEDS_MAX - 1}"])
def test_a_seed_range_past_the_limit_is_refused_before_it_is_expanded(seeds, capsys):
    err = _refused(["compare", *GMM, "--seeds", seeds], capsys)
    assert f"--seeds {seeds}: more than {SEEDS_MAX:,} seeds" in err and "one batch" in err
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than"):
            parse_seeds(seeds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # nothing sized by the range was allocated: a list of SEEDS_MAX seeds alone holds 8 bytes a seed
    assert peak < 8 * SEEDS_MAX, peak


def test_seed_ranges_up_to_the_limit_are_what_they_say():
    assert parse_seeds(f"0-{SEEDS_MAX - 1}") == list(range(SEEDS_MAX))
    assert parse_seeds("1,5,9") == [1, 5, 9] and parse_seeds("0-2, 7") == [0, 1, 2, 7]
    assert parse_seeds("5-2") == []  # an empty range: check_seeds then says "names no seed"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "0"])
def test_fidelity_db_must_be_a_finite_positive_number(value, capsys):
    err = _refused(["compare", *GMM, f"--fidelity-db={value}"], capsys)
    assert "--fidelity-db must be a finite number of dB > 0" in err and f"got {float(value)}" in err


def _compare_json(capsys, *args: str) -> dict:
    assert main(["compare", "--json", "--quiet", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_records_the_chunk_size_and_each_seeds_condition(capsys):
    base = [*GMM, "--seeds", "0-2", "--solvers", "taa-euler", "--conditions", "3,1,2"]
    whole = _compare_json(capsys, *base)["setting"]
    chunked = _compare_json(capsys, *base, "--chunk-size", "4")["setting"]
    assert whole["chunk_size"] is None and chunked["chunk_size"] == 4
    assert whole["conditions"] == [3, 1, 2]
    assert main(["compare", *base]) == 0
    assert "conditions: seed 0: class 3, seed 1: class 1, seed 2: class 2" in capsys.readouterr().out


def test_tiny_sd_digits_in_conditions_are_the_training_prompts():
    """A comma list of digits, digits separated by '|' and a single digit all mean the digits' training prompts;
    text stays a prompt, commas and all."""
    assert _conditions("0,1", 2, "tiny-sd") == [0, 1]
    assert _conditions("0|1", 2, "tiny-sd") == [0, 1]
    assert _conditions("3", 2, "tiny-sd") == [3, 3]
    assert _conditions("7|a handwritten digit one", 2, "tiny-sd") == [7, "a handwritten digit one"]
    assert _conditions("a four, small", 2, "tiny-sd") == ["a four, small"] * 2
    assert _conditions("0,1", 1, "sd-v1-5") == ["0,1"]  # only tiny-sd was trained on digit prompts
    assert condition_texts("tiny-sd", [0, "a seven"]) == [digit_prompt(0), "a seven"]
    assert digit_prompt(0) == "a handwritten digit zero"


def test_tiny_sd_digit_outside_0_9_is_refused_with_the_fix(capsys):
    err = _refused(["compare", "--model", "tiny-sd", "--seeds", "0-1", "--conditions", "3,12"], capsys)
    assert "--conditions: model tiny-sd takes prompts, or a digit 0..9 for its training prompt, got 12" in err


def test_tiny_sd_compare_shows_the_prompts_and_loads_quietly(capfd):
    """End to end on the embedded model: "0,1" conditions the two seeds on the prompts of 0 and 1 (not on the text
    "0,1"), the JSON says so, and --quiet leaves stderr empty (no "Loading weights" bar)."""
    argv = ["compare", "--model", "tiny-sd", "--steps", "3", "--seeds", "0-1", "--solvers", "taa"]
    assert main([*argv, "--conditions", "0,1", "--json", "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["setting"]["conditions"] == [digit_prompt(0), digit_prompt(1)]
    assert err == ""


def test_progress_bars_count_iterations_not_steps(capfd):
    """The bar of a solve that stopped after k of at most T iterations ends at "iteration k (at most T)" with the
    frozen boundary at t=0; no "k/T" fraction or time left that assumes T iterations."""
    assert main(["compare", *GMM, "--seeds", "0-1", "--solvers", "taa-euler", "--json"]) == 0
    out, err = capfd.readouterr()
    (row,) = json.loads(out)["results"]
    k = row["iterations_max"]
    assert k < 20
    last = [line.strip() for line in re.split(r"[\r\n]", err) if line.strip().startswith("taa-euler")][-1]
    assert last.startswith(f"taa-euler : iteration {k} (at most 20), frozen boundary t=0 of T=20 ["), last
    assert not re.search(r"\b\d+/20\b", err), err


def test_top_level_help_is_whole_sentences():
    parser = build_parser()
    assert parser.description.endswith(".") and parser.epilog.endswith(".")
    text = " ".join(parser.format_help().split())
    assert "compare" in text and "sample" in text and "Triangular Anderson Acceleration" in text


def test_sample_summary_records_the_weights_identity(tmp_path):
    out = tmp_path / "out"
    argv = ["sample", "--model", "tiny-dit", "--steps", "4", "--solver", "taa-euler", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    weights = json.loads((out / "summary.json").read_text())["weights"]
    root = Path(weights["source"]["path"])
    assert weights["model"] == "tiny-dit" and weights["synthetic"] is False and weights["files"]
    for name, f in weights["files"].items():  # the sha256 of the very file the loader read
        data = (root / name).read_bytes()
        assert f == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@pytest.mark.parametrize(
    "cmd, model, sampler, fix",
    [
        ("compare", "tiny-flow", "ddim", "use flow-euler with tiny-flow"),
        ("compare", "tiny-flow", "dpmpp-2m", "use flow-euler with tiny-flow"),
        ("compare", "tiny-dit", "flow-euler", "use ddim or ddpm or dpmpp-2m with tiny-dit, or flow-euler with tiny-flow"),  # noqa: E501
        ("compare", "gmm", "flow-euler", "use ddim or ddpm or dpmpp-2m with gmm"),
        ("sample", "tiny-flow", "ddpm", "use flow-euler with tiny-flow"),
    ],
)
def test_a_sampler_the_model_does_not_take_is_refused_naming_both(cmd, model, sampler, fix, capsys, tmp_path):
    extra = ["--out", str(tmp_path / "o")] if cmd == "sample" else []
    err = _refused([cmd, "--model", model, "--sampler", sampler, "--steps", "5", *extra], capsys)
    assert f"--sampler {sampler}: model {model} is a" in err and f"does not take sampler {sampler}" in err, err
    assert fix in err, err


def test_flow_model_defaults_to_flow_euler_and_dpmpp_2m_runs_by_name(capsys):
    flow = _compare_json(capsys, "--model", "tiny-flow", "--steps", "6", "--seeds", "0", "--solvers", "sequential")
    assert flow["setting"]["sampler"] == "flow-euler"
    dpm = _compare_json(capsys, *GMM, "--sampler", "dpmpp-2m", "--seeds", "0", "--solvers", "sequential")
    assert dpm["setting"]["sampler"] == "dpmpp-2m"
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "dpmpp-2m" in capsys.readouterr().out


def test_the_stopping_options_run_as_a_user_gives_them(capsys):
    """--freeze-frac, --target-db and --floor-freeze through `parataa compare`, as a user types them: each reaches
    the solver's config; freezing evaluates fewer states in the same iterations; the target rule ends within T at or
    above its target on the analytic model (float64: its precision floor is far below the target)."""
    base = [*GMM, "--seeds", "0-3"]
    plain, = _compare_json(capsys, *base, "--solvers", "taa-euler")["results"]
    frozen, = _compare_json(capsys, *base, "--solvers", "taa-euler", "--freeze-frac", "0.02")["results"]
    assert (plain["config"]["freeze_frac"], frozen["config"]["freeze_frac"]) == (0.0, 0.02)
    assert frozen["iterations"] == plain["iterations"] and frozen["nfe_mean"] < plain["nfe_mean"]
    target, = _compare_json(capsys, *base, "--solvers", "taa", "--target-db", "40", "--floor-freeze", "2")["results"]
    c = target["config"]
    assert (c["stop"], c["target_db"], c["floor_freeze"]) == ("target", 40.0, 2.0)
    assert target["finished"] and max(target["iterations"]) <= 20 and target["psnr_min_db"] >= 40.0
    err = _refused(["compare", *base, "--solvers", "picard", "--floor-freeze", "2"], capsys)
    assert "floor_freeze" in err or "floor-freeze" in err, err
