"""What several test modules share: the analytic test problem and tolerances derived from dtype and operation.

Tolerances. Two evaluations of one floating-point computation that differ only in the order of operations
(batch size, micro-batching, thread count, another CPU's kernels) may differ by rounding alone. A dot product
of n terms in precision u = eps/2 carries an error of at most n·u·sum|x_i y_i| (Higham, "Accuracy and Stability
of Numerical Algorithms", 2nd ed., section 3.1), so each of the two results lies within that of the exact
value and they lie within twice that of each other. Along a network the reductions of the layers a value passes
through add up: `reduction_length` is the sum of those lengths on the longest path (the network's "operation"),
`scale` the magnitude of the values summed (the output's magnitude; normalised layers keep it near 1).
The bound is the worst case: observed differences are one to two orders of magnitude below it, while a real
error (a wrong row, a lost guidance half, a mis-scaled step) is of the order of the values themselves.
"""

from __future__ import annotations

import torch

from parataa import draw_noise, from_diffusers_config
from parataa.models import GaussianMixture, GaussianMixtureDenoiser

__all__ = ["gmm_problem", "rounding_tol", "step_loop_tol", "dit_reduction_length", "unet_reduction_length"]


def rounding_tol(dtype: torch.dtype, reduction_length: int, scale: float = 1.0) -> float:
    """Bound on |a - b| for two evaluations in `dtype` that differ only in the order of their operations."""
    u = torch.finfo(dtype).eps / 2
    return 2.0 * reduction_length * u * scale


def step_loop_tol(schedule, scale: float, dtype: torch.dtype = torch.float32, roundings_per_step: int = 8) -> float:
    """Bound on the distance between two sequential sampling loops that call the same network on the same
    batches but do the step arithmetic x_t = a_t x_{t+1} + b_t eps + c_t xi in different precisions (diffusers'
    schedulers in `dtype`, this package in float64). Each step adds at most `roundings_per_step` roundings of
    values of size `scale` (the coefficients' own rounding included); an error made at step t reaches x_0
    multiplied by P_{0,t} = a_0 ... a_{t-1} <= P_{0,T}, the largest linear amplification of the schedule."""
    amplification = float(torch.cumprod(schedule.a.double(), 0).max())
    return schedule.num_steps * rounding_tol(dtype, roundings_per_step, scale) * max(amplification, 1.0)


def dit_reduction_length(model: torch.nn.Module) -> int:
    """Sum of the reduction lengths along one path through a diffusers DiTTransformer2DModel."""
    c = model.config
    inner = c.num_attention_heads * c.attention_head_dim
    tokens = (c.sample_size // c.patch_size) ** 2
    patch = c.in_channels * c.patch_size**2
    # patch embedding; per block: adaLN modulation (inner), q/k/v (inner), scores (head dim), softmax and the
    # value sum (tokens, twice), output projection (inner), feed-forward (inner, then 4 inner), layer norms
    # (inner, twice); then the timestep/class embedding MLP (256 sinusoidal + inner) and the final projection.
    per_block = inner + inner + c.attention_head_dim + 2 * tokens + inner + inner + 4 * inner + 2 * inner
    return patch + c.num_layers * per_block + 256 + inner + inner + inner


def unet_reduction_length(unet: torch.nn.Module, text_width: int) -> int:
    """A generous sum of the reduction lengths along one path through a small diffusers UNet2DConditionModel:
    every convolution sums 9 x channels terms, every attention sums over its width and the text tokens."""
    c = unet.config
    widths = list(c.block_out_channels)
    convs = 9 * (2 * sum(widths) + widths[-1]) * (2 * c.layers_per_block + 2)
    attn = 4 * sum(widths) + 77 * len(widths) + text_width * len(widths)
    return convs + attn + 9 * c.in_channels


def gmm_problem(mixture: GaussianMixture, steps: int = 20, sampler: str = "ddim", seeds=(0, 1, 2), cfg=5.0):
    sched = from_diffusers_config(mixture.scheduler_config, steps, sampler=sampler)
    noise = draw_noise(list(seeds), steps, (mixture.dim,))
    model = GaussianMixtureDenoiser(mixture, [s % mixture.num_classes for s in seeds], cfg)
    return model, sched, noise
