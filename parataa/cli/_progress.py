"""The progress bar of a solve on stderr: it counts iterations (parallel steps), not sampling steps, and shows the
frozen boundary, so a solve that stops after 7 iterations of a 100-step trajectory reads

    taa: iteration 7 (at most 100), frozen boundary t=0 of T=100 [00:13, 1.9 s/it]

and never "7/100 [00:13<02:59]" (a bar, a fraction and a time left that assume all 100 iterations will run)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BAR_FORMAT = "{desc}: iteration {n_fmt} (at most {total_fmt}){postfix} [{elapsed}, {rate_fmt}]"


class IterationBar:
    """A solver callback drawing the bar: `bound` is the most iterations the solve may take (max_iters, else T),
    `steps` the trajectory's T. `close()` draws the final state (the count the solve stopped at) once more."""

    def __init__(self, desc: str, bound: int, steps: int, *, leave: bool = True, file: Any = None) -> None:
        from tqdm import tqdm

        self.steps = steps
        self.bar = tqdm(
            total=bound,
            desc=desc,
            unit="it",
            file=sys.stderr if file is None else file,
            leave=leave,
            ascii=True,
            bar_format=BAR_FORMAT,
        )

    def __call__(self, info: Any) -> None:
        hi = int(info.frozen.max())  # every sample's steps above it are final; 0 when all are done
        lo = int(info.frozen.min())
        where = f"t={hi}" if hi == lo else f"t={lo}..{hi}"
        self.bar.set_postfix_str(f"frozen boundary {where} of T={self.steps}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.refresh()
        self.bar.close()


@contextmanager
def loading_bars(show: bool) -> Iterator[None]:
    """Within it, the weight-loading progress bars of transformers ("Loading weights") and diffusers ("Loading
    pipeline components") are drawn only when `show`; the libraries' own settings are restored on exit."""
    if show:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = [lib for lib in (transformers_logging, diffusers_logging) if lib.is_progress_bar_enabled()]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libs:
            lib.enable_progress_bar()
