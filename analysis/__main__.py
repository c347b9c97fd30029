"""python -m analysis --results results/<study> --out <dir>: every table, figure and the audit in one command.

    python -m analysis --results results/smoke --out reports/smoke --config config/smoke.yaml --strict

Writes <out>/tables/{paper_table,yardstick,summary,recount,window_study,history_order_grid}.{csv,md,tex}, the
figures (<out>/figures/ or --figures-dir) as PNG + PDF with index.json, and <out>/audit.{md,html}. Exit status 2
when --strict finds an incomplete study matrix or a rejected run (every one is named on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import figures as F
from .audit import CLAIMS_PATH, audit, headline, write_report
from .loaders import IncompleteStudyError, Study, load_study
from .tables import (
    RECOUNT_CAPTION,
    SUMMARY_CAPTION,
    Threshold,
    grid_table,
    parse_threshold,
    recount_table,
    summary_table,
    window_table,
    with_step_scales,
    write_table,
)
from .yardstick import Yardstick, paper_table, yardstick_table

DEFAULT_THRESHOLDS = ("authors", "paper:g=sigma", "paper:g=beta")
PARTS = ("tables", "figures", "audit")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="results/<study> (the folder holding runs/)")
    ap.add_argument("--out", required=True, help="output folder for tables/, figures/ and the audit")
    ap.add_argument(
        "--config",
        default=None,
        help="study config giving the expected matrix (default: <results>/study.yaml if present)",
    )
    ap.add_argument(
        "--strict", action="store_true", help="refuse an incomplete study matrix or any rejected run, naming each"
    )
    ap.add_argument(
        "--threshold",
        action="append",
        default=None,
        help="recount steps under this rule (repeatable): authors[:abs=,rel=,g=], paper[:tau=,g=], "
        f"flat:<tol>; default {', '.join(DEFAULT_THRESHOLDS)}",
    )
    ap.add_argument("--figures-dir", default=None, help="where figures go (default: <out>/figures)")
    ap.add_argument("--claims", default=str(CLAIMS_PATH), help="claims YAML (default: analysis/paper_claims.yaml)")
    ap.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        default=None,
        help="produce only these parts (repeatable; default all). The audit embeds the PNGs already in the "
        "figures folder when figures are not produced in the same call.",
    )
    args = ap.parse_args(argv)
    parts = set(args.only or PARTS)
    logging.basicConfig(level=logging.INFO, format="[analysis] %(message)s", stream=sys.stderr)
    log = logging.getLogger("analysis")

    results, out = Path(args.results), Path(args.out)
    config = args.config
    if config is None and (results / "study.yaml").is_file():
        config = results / "study.yaml"
    if args.strict and config is None:
        print(
            "--strict needs the study config (--config config/<study>.yaml) to know the expected matrix",
            file=sys.stderr,
        )
        return 2
    try:
        thresholds = [parse_threshold(t) for t in (args.threshold or DEFAULT_THRESHOLDS)]
        study = load_study(results, expected=config, strict=args.strict)
    except IncompleteStudyError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"python -m analysis: {e}", file=sys.stderr)
        return 1
    notes: list[str] = list(study.problems)
    for p in study.problems:
        log.warning(p)
    if not study.runs:
        print(
            f"{results}: no verified run to analyse" + (f" ({len(study.rejected)} rejected)" if study.rejected else ""),
            file=sys.stderr,
        )
        return 1

    samples = study.samples
    ys = Yardstick.of(study)  # the yardstick frames, once for the tables, the figures and the audit
    written: list[Path] = []
    if "tables" in parts:
        written += write_tables(study, out / "tables", thresholds, notes, ys)
    fig_dir = Path(args.figures_dir) if args.figures_dir else out / "figures"
    missing: dict[str, str] = {}
    if "figures" in parts:
        figs = F.all_figures(study, fig_dir, notes, ys)
        _, missing = F.read_index(fig_dir)
    else:
        figs, missing = F.read_index(fig_dir)
        notes += [f"{name}: {why}" for name, why in missing.items()]
    if "audit" not in parts:
        log.info(f"wrote {len(written)} table files under {out} and {sum(len(v) for v in figs.values())} figure files")
        return 0
    context = {
        "results": str(results),
        "verified runs": len(study.runs),
        "rejected runs": len(study.rejected),
        "models": ", ".join(sorted(set(samples["model"]))),
        "devices": ", ".join(sorted(set(samples["device"].astype(str)))) if "device" in samples else "?",
        "git": ", ".join(sorted({str(r.manifest.get("git_sha")) for r in study.runs})),
        "matrix": f"checked against {config}" if config else "not checked (no study config given)",
    }
    results_list, data = audit(samples, ys.settings, args.claims)
    written += write_report(results_list, data, out, context, notes, figs, missing)
    log.info(f"wrote {len(written)} table/report files under {out}, figures in {fig_dir}")
    log.info(headline(results_list))
    for r in results_list:
        log.info(f"{r.claim['id']}: paper's models {r.verdict.verdict}; embedded models {r.embedded.verdict.verdict}")
    return 0


def write_tables(
    study: Study, out: Path, thresholds: list[Threshold], notes: list[str], yardstick: Yardstick | None = None
) -> list[Path]:
    samples = study.samples
    written = write_table(summary_table(samples), out, "summary", SUMMARY_CAPTION)
    st = (yardstick or Yardstick.of(study)).settings
    numbers, text = paper_table(st)
    written += write_table(numbers, out, "paper_table", PAPER_CAPTION, display=text)
    written += write_table(yardstick_table(st), out, "yardstick", YARDSTICK_CAPTION)
    conv = with_step_scales(study.convergence, study.step_scales)
    rc, rc_notes = recount_table(samples, conv, thresholds, study.solver_settings)
    notes += rc_notes
    written += write_table(rc, out, "recount", RECOUNT_CAPTION)
    for name, t, what in (
        ("window_study", window_table(st), "no solver setting was stored at more than one window size"),
        ("history_order_grid", grid_table(st), "TAA was not stored over several history sizes m or orders k"),
    ):
        if t.empty:
            notes.append(f"table {name}: {what}")
        else:
            written += write_table(t, out, name, GRID_CAPTIONS[name])
    return written


PAPER_CAPTION = (
    "Per model, sampler and steps: sequential sampling takes `steps` steps; for each solver variant, its best "
    "setting (fewest mean steps to 40 dB, as the paper chose m and k by grid search): parallel steps at its own "
    "stop and to 40 dB (the first iteration whose x0 is within PSNR 40 dB of the sequential x0 of the same seed; "
    "'never' = not reached before the stop, not averaged), mean / max over seeds; the lowest PSNR at the stop "
    "over seeds (data range 2; exact = identical); speed-ups in steps = sequential steps / mean steps."
)
YARDSTICK_CAPTION = (
    "Every setting of the study: steps at the stop and to 30 / 40 / 50 dB (mean over seeds; empty when a seed "
    "is censored, i.e. never got there before the stop: n_censored_*; n_measured = seeds with fidelity rows), "
    "lowest PSNR at the stop, speed-ups in steps."
)
GRID_CAPTIONS = {
    "window_study": "Steps at the stop and to 40 dB vs the window W, other settings fixed (means over seeds).",
    "history_order_grid": "TAA over history m x order k, other settings fixed (means over seeds; "
    "to_40db_mean empty where a seed never reached 40 dB).",
}


if __name__ == "__main__":
    sys.exit(main())
