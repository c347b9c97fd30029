"""Stored runs: round trip, manifest written last, every corrupt or truncated file refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from parataa import storage
from parataa.manifest import DIGEST_KEY, seal
from parataa.storage import CorruptRunError

SCHEDULE = {"name": "ddim-5", "num_steps": 5, "alpha_in": [0.1, 0.3, 0.5, 0.7, 0.9], "sigma": [0.0, 0.1, 0.2, 0.3, 0.4]}


def _write(directory: Path, seeds=(3, 5), iterates: bool = True) -> dict:
    n = len(seeds)
    rng = np.random.default_rng(0)
    traj = rng.standard_normal((n, 6, 4))
    return storage.write_run(
        directory,
        samples=pd.DataFrame({"seed": list(seeds), "iterations": [4, 5], "err_max": [np.nan, 0.5]}),
        convergence=pd.DataFrame({"sample": [0, 1, 0], "iteration": [0, 0, 1], "rho": [1.0, 2.0, 0.1]}),
        timings=pd.DataFrame({"iteration": [0, 1], "model_s": [0.1, 0.2]}),
        trajectory=traj,
        x0=traj[:, 0],
        seeds=seeds,
        config={"model": "gmm", "steps": 5, "seeds": list(seeds)},
        noise_sha256="ab" * 32,
        devices=["cpu"],
        world_size=1,
        iterates=rng.standard_normal((1, 3, 4)) if iterates else None,
        fidelity=pd.DataFrame({"sample": [0, 1], "iteration": [1, 1], "psnr_db": [30.0, 40.0]}) if iterates else None,
        extra={"schedule": SCHEDULE, "baseline": None},
    )


def test_round_trip_and_manifest(tmp_path):
    m = _write(tmp_path / "run")
    assert m["format"] == storage.RUN_FORMAT
    assert set(m["files"]) == set(storage.DATA_FILES) | {"iterates.safetensors", "fidelity.parquet"}
    for key in ("created", "config", "git_sha", "environment", "devices", "world_size", "noise_sha256", DIGEST_KEY):
        assert key in m
    assert json.loads((tmp_path / "run" / "manifest.json").read_text()) == m
    assert m["environment"]["python"] and "torch" in m["environment"]
    run = storage.load_run(tmp_path / "run")
    assert run.seeds == (3, 5)
    assert run.trajectory.dtype == np.float32 and run.trajectory.shape == (2, 6, 4)
    assert run.x0.dtype == np.float64
    assert list(run.samples["seed"]) == [3, 5]
    assert run.iterates.shape == (1, 3, 4)
    assert list(run.fidelity["psnr_db"]) == [30.0, 40.0]
    assert storage.is_complete(tmp_path / "run", {"model": "gmm", "steps": 5, "seeds": [3, 5]})
    assert not storage.is_complete(tmp_path / "run", {"model": "gmm", "steps": 6, "seeds": [3, 5]})


def test_x0_is_stored_exactly(tmp_path):
    _write(tmp_path / "run")
    rng = np.random.default_rng(0)
    traj = rng.standard_normal((2, 6, 4))
    np.testing.assert_array_equal(storage.load_run(tmp_path / "run").x0, traj[:, 0])


@pytest.mark.parametrize("name", list(storage.DATA_FILES) + ["iterates.safetensors", "fidelity.parquet"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_or_truncated_file_is_refused(tmp_path, name, damage):
    d = tmp_path / "run"
    _write(d)
    f = d / name
    raw = bytearray(f.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
        f.write_bytes(bytes(raw))
    elif damage == "truncate":
        f.write_bytes(bytes(raw[: len(raw) - 7]))
    else:
        f.unlink()
    with pytest.raises(CorruptRunError, match=name):
        storage.load_run(d)
    assert not storage.is_complete(d)


def test_manifest_is_written_last(tmp_path, monkeypatch):
    """A job killed after the data files but before the manifest leaves a run that does not exist."""
    d = tmp_path / "run"

    def die(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(storage, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        _write(d)
    assert (d / "trajectory.safetensors").exists() and not (d / "manifest.json").exists()
    with pytest.raises(CorruptRunError, match="no manifest"):
        storage.load_run(d)
    assert not storage.is_complete(d)


def test_rewriting_a_run_without_the_optional_files_removes_them(tmp_path):
    d = tmp_path / "run"
    _write(d)
    m = _write(d, iterates=False)
    assert set(m["files"]) == set(storage.DATA_FILES)
    assert not (d / "fidelity.parquet").exists() and not (d / "iterates.safetensors").exists()
    assert storage.load_run(d).fidelity is None


def test_rewriting_a_run_drops_the_old_manifest_first(tmp_path, monkeypatch):
    d = tmp_path / "run"
    _write(d)
    monkeypatch.setattr(storage, "atomic_write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        _write(d, iterates=False)
    assert not (d / "manifest.json").exists()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: {**m, "format": "other/1"}, "format"),
        (lambda m: {**m, "files": {}}, "files"),
        (lambda m: {**m, "files": {**m["files"], "samples.parquet": "0" * 64}}, "samples.parquet"),
        (lambda m: {k: v for k, v in m.items() if k != "files"}, "files"),
        (lambda m: {**m, "files": {**m["files"], "../x.parquet": "0" * 64}}, "outside the directory"),
    ],
)
def test_bad_manifest_is_refused(tmp_path, edit, match):
    """Each check on its own: the edited manifest is re-sealed, so its own hash matches."""
    d = tmp_path / "run"
    m = _write(d)
    (d / "manifest.json").write_text(json.dumps(seal(edit(m))))
    with pytest.raises(CorruptRunError, match=match):
        storage.load_run(d)


def test_unreadable_manifest_is_refused(tmp_path):
    d = tmp_path / "run"
    _write(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptRunError, match="unreadable manifest"):
        storage.load_run(d)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["schedule"]["alpha_in"].__setitem__(2, m["schedule"]["alpha_in"][2] + 1e-12),
        lambda m: m["config"].__setitem__("steps", 6),
        lambda m: m.__setitem__("baseline", {"path": "elsewhere/manifest.json", "sha256": "0" * 64}),
        lambda m: m.pop(DIGEST_KEY),
        lambda m: m.__setitem__(DIGEST_KEY, "0" * 64),
    ],
    ids=["schedule-coefficient", "config", "baseline", "no-self-hash", "wrong-self-hash"],
)
def test_every_manifest_field_is_covered_by_its_own_hash(tmp_path, edit):
    """One changed schedule coefficient (or any other field) and the run does not exist for any reader."""
    d = tmp_path / "run"
    m = _write(d)
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m, indent=2))
    with pytest.raises(CorruptRunError, match=DIGEST_KEY):
        storage.read_manifest(d)
    assert not storage.is_complete(d)


def test_manifest_listing_too_few_files_is_refused(tmp_path):
    d = tmp_path / "run"
    m = _write(d)
    files = dict(m["files"])
    files.pop("trajectory.safetensors")
    (d / "manifest.json").write_text(json.dumps(seal({**m, "files": files})))
    with pytest.raises(CorruptRunError, match="required files"):
        storage.load_run(d)


def test_aggregate_verifies_every_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a)
    _write(b, seeds=(7, 8))
    m = storage.write_aggregate(tmp_path / "agg", [a, b], root=tmp_path / "agg")
    assert [r["path"] for r in m["runs"]] == ["../a/manifest.json", "../b/manifest.json"]
    agg = storage.read_aggregate(tmp_path / "agg")
    assert list(agg["samples"]["seed"]) == [3, 5, 7, 8]
    assert len(agg["convergence"]) == 6
    # one flipped byte in one run: no aggregate
    f = b / "convergence.parquet"
    raw = bytearray(f.read_bytes())
    raw[10] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(CorruptRunError, match="convergence.parquet"):
        storage.write_aggregate(tmp_path / "agg2", [a, b])
    # and a damaged aggregate is refused too
    t = tmp_path / "agg" / "samples.parquet"
    t.write_bytes(t.read_bytes()[:-3])
    with pytest.raises(CorruptRunError, match="samples.parquet"):
        storage.read_aggregate(tmp_path / "agg")


def test_solver_checkpoint_corrupt_is_ignored(tmp_path):
    torch = pytest.importorskip("torch")
    from parataa.jobs.checkpoint import load_state, save_state

    p = tmp_path / "state.pt"
    payload = {"state": {"x": torch.arange(6.0)}, "iterates": [], "wall_s": 1.0}
    save_state(p, "key1", payload)
    assert torch.equal(load_state(p, "key1", "cpu")["state"]["x"], torch.arange(6.0))
    assert load_state(p, "other-key", "cpu") is None  # a checkpoint of another config is not resumed
    raw = bytearray(p.read_bytes())
    raw[-20] ^= 0x01
    p.write_bytes(bytes(raw))
    assert load_state(p, "key1", "cpu") is None
    p.write_bytes(bytes(raw[:100]))
    assert load_state(p, "key1", "cpu") is None
