"""Images in [0, 1] -> PNG files (single images and grids), for figures and `parataa sample`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["to_uint8", "save_png", "save_grid"]


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> [H, W] (C = 1) or [H, W, 3] uint8."""
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape [1 or 3, H, W], got {tuple(img.shape)}")
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def save_png(img: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    from PIL import Image

    im = Image.fromarray(to_uint8(img))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10, pad: int = 1, scale: int = 2) -> Path:
    """[N, C, H, W] in [0, 1] -> one PNG with nrow images per row, `pad` white pixels between them."""
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return save_png(grid, path, scale)
