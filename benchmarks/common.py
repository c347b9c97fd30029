"""What the benchmarks share: the DiT-XL/2-shaped model (random weights) and device timing."""

from __future__ import annotations

import statistics
import time

import torch

DIT_XL_2 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
    norm_elementwise_affine=False, activation_fn="gelu-approximate", attention_bias=True,
)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def xl_denoiser(device: torch.device, labels: list[int], small: bool = False):
    """Guided DiTDenoiser over a DiT-XL/2-shaped transformer with random weights (fp16 on GPU).

    Only the cost of a call means anything: the weights are not trained. `small` swaps in a 2-layer
    transformer for CPU smoke runs.
    """
    from diffusers import DiTTransformer2DModel

    from parataa.models.dit import DiTDenoiser

    cfg = dict(DIT_XL_2, num_layers=2, num_attention_heads=4) if small else DIT_XL_2
    torch.manual_seed(0)
    net = DiTTransformer2DModel(**cfg)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return DiTDenoiser(net, labels, cfg_scale=5.0, guided_channels=3, device=device, dtype=dtype)


def time_call(model, rows: int, shape, device, repeat: int = 5) -> float:
    """Median seconds of one model call on `rows` states."""
    x = torch.randn(rows, *shape, dtype=torch.float64, device=device)
    t = torch.full((rows,), 500.0, dtype=torch.float64, device=device)
    s = torch.zeros(rows, dtype=torch.long, device=device)
    model(x, t, s)
    out = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        model(x, t, s)
        sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)
