"""The job's status lines: the baseline (the sequential run every other run is measured against) says so, and
the solver runs give their distance to it; no line reads "err_max nan". The progress bars count iterations."""

from __future__ import annotations

import dataclasses
import re

from tests.test_workflow import _prepare, _small_spec


def test_status_lines_name_the_baseline_and_give_err_max_of_the_others(tmp_path, capsys):
    from parataa.jobs.shard import ShardJob

    cfg, spec = _small_spec(tmp_path, solvers={"taa": {}}, steps=8, dim=4)
    _prepare(cfg)  # the sequential baseline job
    base = [line for line in capsys.readouterr().out.splitlines() if " run 1/1 " in line]
    ShardJob()(spec)
    runs = [line for line in capsys.readouterr().out.splitlines() if re.search(r" run \d+/\d+ ", line)]
    assert len(base) == 1 and ", the baseline, " in base[0] and "err_max" not in base[0], base
    assert runs and all(re.search(r", err_max \d\.\d\de[-+]\d\d, ", line) for line in runs), runs
    assert "nan" not in " ".join(base + runs)


def test_job_progress_bars_count_iterations_not_steps(tmp_path, capfd):
    from parataa.jobs.shard import ShardJob

    cfg, spec = _small_spec(tmp_path, solvers={"taa-euler": {}}, steps=8, dim=4)
    _prepare(cfg)
    capfd.readouterr()
    ShardJob()(dataclasses.replace(spec, progress=True))
    err = capfd.readouterr().err
    assert re.search(r": iteration \d+ \(at most 8\) \[", err), err
    assert not re.search(r"\b\d+/8\b", err), err
