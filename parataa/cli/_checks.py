"""Checks of command-line values shared by the subcommands, run before any model is built or any step solved:
each raises ValueError naming the flag, the value and what is allowed (parataa.cli.main prints it as one line)."""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..conditions import check_condition
from ..samplers import SAMPLERS
from ._processes import LAUNCHED

SEED_MAX = 2**63 - 1  # seeds are stored as int64 (docs/STORAGE.md); the workflow's schema has the same range
# One command solves all its seeds as one batch: each seed holds its noise, (T+1) states and the solver's history in
# memory at once (tens of MB a seed for an SD-sized model), so a range is bounded before anything is allocated.
SEEDS_MAX = 10_000
# the names parataa.models._common.resolve_dtype takes (that module imports torch)
DTYPES = ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16", "float64", "fp64")


def check_steps(steps: int) -> None:
    if not 1 <= steps <= 1000:
        raise ValueError(f"--steps must be an integer 1 .. 1000 (the models' training steps), got {steps}")


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """Seeds from "0-7", "1,5,9" or "0-3,8": the count is checked against SEEDS_MAX range by range, before any
    range is expanded, so "0-99999999999" is refused at once instead of filling the memory."""
    parts: list[tuple[int, int]] = []
    count = 0
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1)) if not part.startswith("-") else (int(part), int(part))
            else:
                lo = hi = int(part)
        except ValueError:
            raise ValueError(f"{flag}: expected integers or ranges such as 0-7 or 1,5,9, got {text!r}") from None
        count += max(0, hi - lo + 1)
        if count > SEEDS_MAX:
            raise ValueError(
                f"{flag} {text}: more than {SEEDS_MAX:,} seeds; one command solves all its seeds as one batch, "
                f"each with its whole trajectory in memory, so it takes at most {SEEDS_MAX:,}: split the range over "
                "several commands, or run the workflow (seeds_per_shard)"
            )
        parts.append((lo, hi))
    return [s for lo, hi in parts for s in range(lo, hi + 1)]


def check_seeds(seeds: Sequence[int], flag: str = "--seeds") -> None:
    if not seeds:
        raise ValueError(f"{flag} names no seed; give e.g. 0-3 or 1,5,9")
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise ValueError(f"{flag}: seeds must be integers 0 .. 2^63-1, got {bad[0]}")
    dup = sorted(s for s, n in Counter(seeds).items() if n > 1)
    if dup:
        raise ValueError(f"{flag}: seeds must be distinct (one sample each), got {dup[0]} twice")


def check_number(flag: str, value: float | None, minimum: float = 0.0) -> None:
    if value is not None and not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{flag} must be a finite number >= {minimum:g}, got {value}")


def check_conditions(model: str, conditions: Sequence[Any], flag: str, options: dict[str, Any] | None = None) -> None:
    for c in conditions:
        problem = check_condition(model, c, options)
        if problem:
            raise ValueError(f"{flag}: {problem}")


def check_device(device: str) -> None:
    """A device torch knows and this machine has: cpu, cuda, cuda:N (mps on Apple silicon)."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if d.type == "cpu":
        return
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is visible here (torch sees none); use --device cpu")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise ValueError(f"--device {device}: this machine has {n} CUDA GPU(s), cuda:0 .. cuda:{n - 1}")
        return
    if d.type == "mps" and torch.backends.mps.is_available():
        return
    raise ValueError(f"--device {device!r}: parataa runs on cpu or cuda (cuda:N), not on {d.type!r} here")


def check_out_dir(path: str) -> Path:
    """Prove the output folder writable before anything is computed, leaving nothing behind: the folders that
    do not exist yet are made, a probe file is written and removed, and so are the folders made for it (a run
    that fails later must not leave an empty output folder). In the processes `--processes/--gpus N` starts the
    launcher has already proved it, and N probes of one missing folder at once would race: they skip it."""
    out = Path(path)
    if os.environ.get(LAUNCHED) is not None:
        return out
    made: list[Path] = []
    try:
        missing = [p for p in (out, *out.parents) if not p.exists()]
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".parataa-write-check")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--out {path}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
    return out


def add_sampler_arguments(p: Any) -> None:
    """--sampler and --steps, the same for compare and sample."""
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="ddim, ddpm or dpmpp-2m (DPM-Solver++(2M)) for diffusion models, flow-euler for flow-matching ones "
        "(tiny-flow); default: flow-euler for tiny-flow, ddim otherwise",
    )
    p.add_argument("--steps", type=int, default=100, help="sampling steps T (default 100)")
