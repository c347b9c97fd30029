"""Distance of every iteration's x0 to the sequential sample: the study's rule-free yardstick.

A parallel solver is judged by when its x0 becomes the image sequential sampling gives, not by its own stopping
rule (rules differ between solvers). `FidelityRecorder` is a solver callback: after every iteration it measures
the current x0 against a reference x0 (the sequential solve of the same noise) and keeps one row per (sample,
iteration). "Iterations to N dB" is then the first iteration count whose x0 is within PSNR N dB of the reference
(docs/METHOD.md section 9). States live in [-1, 1] for pixel-space models (data range 2); for latent models a
`decode` callable maps x0 to images in [0, 1] (data range 1) and the image PSNR is recorded beside the state's.
Observing never changes the solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["psnr_db", "FidelityRecorder", "iterations_to_db", "FIDELITY_COLUMNS"]

from .manifest import FIDELITY_COLUMNS  # noqa: E402 - one definition, torch-free (storage and analysis read it)


def psnr_db(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-sample PSNR in dB of x against ref ([N, ...] each); +inf where they are equal."""
    mse = ((x.double() - ref.double()) ** 2).reshape(x.shape[0], -1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


class FidelityRecorder:
    """Solver callback recording, per iteration, the distance of every sample's x0 to `reference_x0`.

    Iterations are counted from 1 (the count of model calls made so far), so "iterations to 40 dB" reads directly
    as a number of parallel steps. `decode` (optional) maps x0 [N, *S] to images in [0, 1]; it runs at every
    iteration, so pass it only when the image distance is wanted (a VAE decode per iteration costs time).
    """

    def __init__(
        self,
        reference_x0: torch.Tensor,
        *,
        data_range: float = 2.0,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.reference = reference_x0.detach().double()
        self.data_range = float(data_range)
        self.decode = decode
        self.reference_image = decode(reference_x0).double().cpu() if decode is not None else None
        self._rows: list[dict[str, np.ndarray]] = []

    def measure(self, x0: torch.Tensor, iteration: int) -> dict[str, np.ndarray]:
        ref = self.reference.to(x0.device)
        diff = (x0.double() - ref).reshape(x0.shape[0], -1)
        row = {
            "sample": np.arange(x0.shape[0], dtype=np.int64),
            "iteration": np.full(x0.shape[0], iteration, dtype=np.int64),
            "psnr_db": psnr_db(x0, ref, self.data_range).cpu().numpy(),
            "err_max": diff.abs().max(dim=1).values.cpu().numpy(),
            "err_rms": diff.pow(2).mean(dim=1).sqrt().cpu().numpy(),
            "image_psnr_db": np.full(x0.shape[0], np.nan),
        }
        if self.decode is not None and self.reference_image is not None:
            row["image_psnr_db"] = psnr_db(self.decode(x0).double().cpu(), self.reference_image, 1.0).numpy()
        return row

    def __call__(self, info: Any) -> None:
        self._rows.append(self.measure(info.trajectory[:, 0], int(info.iteration) + 1))

    @property
    def rows(self) -> dict[str, np.ndarray]:
        """All rows so far, column by column (FIDELITY_COLUMNS)."""
        if not self._rows:
            return {c: np.zeros(0, dtype=np.float64) for c in FIDELITY_COLUMNS}
        return {c: np.concatenate([r[c] for r in self._rows]) for c in FIDELITY_COLUMNS}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The rows so far as tensors (column -> 1-d tensor), for a checkpoint loadable with weights_only=True."""
        return {c: torch.from_numpy(np.ascontiguousarray(v)) for c, v in self.rows.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the rows by those of `state_dict()` (a resumed solve continues the table where it stopped)."""
        missing = [c for c in FIDELITY_COLUMNS if c not in state]
        if missing:
            raise ValueError(f"fidelity state lacks columns {missing}")
        rows = {c: state[c].detach().cpu().numpy().copy() for c in FIDELITY_COLUMNS}
        self._rows = [rows] if len(rows["sample"]) else []

    def table(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(FIDELITY_COLUMNS))

    def iterations_to(self, db: float, column: str = "psnr_db") -> np.ndarray:
        """Per sample: the first iteration whose x0 is within `db` dB of the reference (NaN if none was)."""
        rows = self.rows
        n = int(self.reference.shape[0])
        return iterations_to_db(rows["sample"], rows["iteration"], rows[column], db, n)


def iterations_to_db(
    sample: np.ndarray, iteration: np.ndarray, psnr: np.ndarray, db: float, num_samples: int
) -> np.ndarray:
    """First iteration per sample with psnr >= db (NaN where never): the yardstick from a fidelity table."""
    out = np.full(num_samples, math.nan)
    hit = psnr >= db
    for s, it in zip(sample[hit], iteration[hit], strict=True):
        if math.isnan(out[s]) or it < out[s]:
            out[s] = it
    return out
