"""The package's metadata as setuptools reads it: the MIT license declared as an SPDX expression with its LICENSE
file (no deprecated license table), and the outputs a user's first commands write ignored by git."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_file_is_the_mit_license_of_the_authors():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the parataa authors" in text
    assert "Permission is hereby granted, free of charge" in text and 'PROVIDED "AS IS"' in text


def test_setuptools_reads_the_license_expression_without_a_deprecation(tmp_path, monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), "pyproject.toml")
    assert [str(w.message).split("\n")[0] for w in caught] == []
    assert dist.metadata.license_expression == "MIT" and dist.metadata.license_files == ["LICENSE"]


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_outputs_of_the_first_commands_are_ignored_by_git():
    paths = ["out/seven/sample.png", "report.html", "results/study/x", "reports/study/audit.md"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == paths, done.stdout
