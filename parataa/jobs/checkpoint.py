"""Solver-state checkpoints of a job: written atomically with their sha256, resumed only by the same run.

A checkpoint is `torch.save` of {"format", "key", "state": SolverState.state_dict(), ...what the job keeps beside
it (iterates, fidelity rows, wall time)}, at the run's `JobSpec.state_path`, plus a side file `state.pt.json`
holding its sha256 and the run key (`JobSpec.run_key`). `load_state` returns None for a missing, corrupt,
truncated or foreign checkpoint: the run then starts over, which gives the same result.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..manifest import atomic_write_bytes, atomic_write_json
from ..solvers import SolverState

__all__ = ["STATE_FORMAT", "save_state", "load_state", "remove_state", "snapshot"]

STATE_FORMAT = "parataa.solver_state/1"


def _side(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save_state(path: str | Path, key: str, payload: dict[str, Any]) -> None:
    """torch.save the checkpoint atomically, then its sha256 (a checkpoint without a matching hash is ignored)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, "key": key, **payload}, buf)
    digest = atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(_side(path), {"sha256": digest, "key": key})


def load_state(path: str | Path, key: str, device: str) -> dict[str, Any] | None:
    """The checkpoint of the run with this key, or None when there is none, or it is corrupt, truncated or
    from a different config (then the run starts over, which gives the same result)."""
    path = Path(path)
    side = _side(path)
    if not path.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        raw = path.read_bytes()
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("key") != key or hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        print(f"[parataa] ignoring checkpoint {path}: hash or config does not match", file=sys.stderr, flush=True)
        return None
    payload = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    if payload.get("format") != STATE_FORMAT or payload.get("key") != key:
        return None
    return payload


def remove_state(path: str | Path) -> None:
    """Delete a run's checkpoint (after the run was stored)."""
    path = Path(path)
    for p in (path, _side(path)):
        p.unlink(missing_ok=True)


def snapshot(state: SolverState) -> dict[str, Any]:
    """A copy of the state that later in-place updates cannot change (log entries are never mutated)."""
    out: dict[str, Any] = {}
    for k, v in state.state_dict().items():
        if isinstance(v, torch.Tensor):
            out[k] = v.detach().clone()
        elif isinstance(v, list):
            out[k] = list(v)
        else:
            out[k] = v
    return out
