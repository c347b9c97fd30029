"""Flow-matching models as denoisers: they return the velocity v = noise - x_0 at a level s, not eps.

A flow state is x_s = (1 - s) x_0 + s noise and the model timestep is tau = s * num_train_timesteps (float, not
rounded). Solvers read the output through the flow-Euler table (`parataa.families.flow_euler_schedule`), whose
b_t multiplies the model output, so they need no other change.

FlowDiTDenoiser       a class-conditional diffusers DiTTransformer2DModel trained on velocities (tiny-flow);
                      guidance v_u + s (v_c - v_u), the two halves in one batch, as `DiTDenoiser`.
GaussianMixtureFlow   the exact velocity of the analytic mixture of docs/METHOD.md section 7 on the flow path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from ._common import load_part, resolve_weights
from .dit import DiTDenoiser
from .gmm import GaussianMixture, class_labels

__all__ = ["FlowDiTDenoiser", "GaussianMixtureFlow", "FLOW_GMM_SCHEDULER", "load_flow_dit"]

# the mixture's flow scheduler: FlowMatchEulerDiscreteScheduler, 1000 training levels, no shift
FLOW_GMM_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0}


class FlowDiTDenoiser(DiTDenoiser):
    """Guided velocity of a class-conditional flow DiT; timesteps are the levels s * 1000, unrounded."""

    schedule = "flow"
    integer_timesteps = False


def load_flow_dit(path: str, class_labels: Sequence[int], *, hub: bool = False, **kwargs: Any) -> FlowDiTDenoiser:
    """A FlowDiTDenoiser (all channels guided, no VAE) from a folder with transformer/ and, optionally,
    scheduler/scheduler_config.json (FlowMatchEulerDiscreteScheduler; default: tiny-flow's, shift 1)."""
    from diffusers import DiTTransformer2DModel

    from .embedded import TINY_FLOW_SCHEDULER

    what = f"flow DiT model {path}"
    source = resolve_weights(path, what, ("transformer",), repo=None, hub=hub)
    transformer = load_part(DiTTransformer2DModel, source, "transformer", what)
    den = FlowDiTDenoiser(transformer, class_labels, guided_channels=None, **kwargs)
    cfg_file = None if source.root is None else source.root / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file is not None and cfg_file.is_file() else TINY_FLOW_SCHEDULER
    den.scheduler_config = {k: v for k, v in cfg.items() if not k.startswith("_")}
    den.source = source
    return den


class GaussianMixtureFlow:
    """Exact guided velocity E[noise - x_0 | x_s] of a `GaussianMixture` on the flow path.

    Per component k (data N(mu_k, q^2 I)) the state is N((1 - s) mu_k, V I), V = (1 - s)^2 q^2 + s^2, and
    E[noise - x_0 | x_s, k] = (s - (1 - s) q^2) (x_s - (1 - s) mu_k) / V - mu_k, finite for every s in [0, 1].
    Weights w_k proportional to pi_k N(x_s; (1 - s) mu_k, V I); a class label makes them one-hot."""

    def __init__(self, mixture: GaussianMixture, labels: Sequence[int], guidance_scale: float = 5.0,
                 num_train_timesteps: int = 1000) -> None:
        self.mixture = mixture
        self.labels = class_labels(labels, mixture.num_classes)
        self.guidance_scale = float(guidance_scale)
        self.num_train_timesteps = int(num_train_timesteps)
        self.calls = 0

    def velocity(self, x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Exact velocity for states x [B, d] at levels s [B]; labels [B] (-1 = unconditional) or None."""
        mix = self.mixture
        means = mix.means.to(x.device)
        s = s.to(x.device, torch.float64)[:, None]
        q2 = mix.spread**2
        var = (1 - s) ** 2 * q2 + s**2  # [B, 1]
        diff = x[:, :, None] - (1 - s)[:, :, None] * means.T[None]  # [B, d, K]
        logp = -0.5 * (diff**2).sum(dim=1) / var + mix.log_weights.to(x.device)[None]
        w = torch.softmax(logp, dim=1)
        if labels is not None:
            onehot = torch.nn.functional.one_hot(labels.clamp(min=0), mix.num_classes).to(w.dtype)
            w = torch.where((labels >= 0)[:, None], onehot, w)
        per_k = (s - (1 - s) * q2)[:, :, None] * diff / var[:, :, None] - means.T[None]
        return (per_k * w[:, None, :]).sum(dim=2)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        s = timesteps.to(torch.float64) / self.num_train_timesteps
        labels = self.labels.to(x.device)[samples]
        cond = self.velocity(flat, s, labels)
        if self.guidance_scale != 1.0:
            uncond = self.velocity(flat, s, None)
            cond = uncond + self.guidance_scale * (cond - uncond)
        return cond.reshape(x.shape)
