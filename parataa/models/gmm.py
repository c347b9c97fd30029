"""A class-conditional Gaussian mixture with an exact noise prediction (docs/METHOD.md section 7).

Data: x0 ~ sum_k pi_k N(mu_k, s^2 I) in R^d. At noise level A (x = sqrt(A) x0 + sqrt(1-A) eps) the marginal
is sum_k pi_k N(sqrt(A) mu_k, v I) with v = A s^2 + 1 - A, and the exact noise prediction is

    eps(x) = sqrt(1 - A) * sum_k w_k(x) (x - sqrt(A) mu_k) / v,   w_k ∝ pi_k N(x; sqrt(A) mu_k, v I).

Conditioning on class k makes w one-hot; classifier-free guidance mixes the conditional and unconditional
predictions, eps_u + s (eps_c - eps_u). Nonlinear, cheap, no weights: every solver can be checked against the
exact sequential trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..schedules import betas_for

__all__ = ["GaussianMixture", "GaussianMixtureDenoiser"]


class GaussianMixture:
    def __init__(
        self,
        dim: int = 64,
        num_classes: int = 10,
        spread: float = 0.15,
        seed: int = 0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not spread > 0:
            raise ValueError(f"spread must be > 0, got {spread}")
        g = torch.Generator().manual_seed(seed)
        self.dim, self.num_classes, self.spread = dim, num_classes, float(spread)
        self.means = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
        self.log_weights = torch.full(
            (num_classes,), -torch.log(torch.tensor(float(num_classes))).item(), dtype=torch.float64
        )
        betas = betas_for(beta_schedule, num_train_timesteps, beta_start, beta_end, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.scheduler_config = {
            "num_train_timesteps": num_train_timesteps,
            "beta_schedule": beta_schedule,
            "beta_start": beta_start,
            "beta_end": beta_end,
            "clip_sample": False,
            "set_alpha_to_one": True,
            "timestep_spacing": "leading",
            "steps_offset": 0,
            "prediction_type": "epsilon",
        }

    def eps(self, x: torch.Tensor, alpha: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Exact eps for states x [B, d] at levels alpha [B]; labels [B] (-1 = unconditional) or None."""
        means = self.means.to(x.device)
        a = alpha.to(x.device, torch.float64)[:, None]
        v = a * self.spread**2 + 1 - a  # [B, 1]
        centers = torch.sqrt(a)[:, :, None] * means.T[None]  # [B, d, K]
        diff = x[:, :, None] - centers
        logp = -0.5 * (diff**2).sum(dim=1) / v + self.log_weights.to(x.device)[None]  # [B, K]
        w = torch.softmax(logp, dim=1)
        if labels is not None:
            labels = labels.to(x.device)
            onehot = torch.nn.functional.one_hot(labels.clamp(min=0), self.num_classes).to(w.dtype)
            w = torch.where((labels >= 0)[:, None], onehot, w)
        mean_center = (diff * w[:, None, :]).sum(dim=2)
        return torch.sqrt(1 - a) * mean_center / v

    def sample_data(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(labels.shape[0], self.dim, generator=generator, dtype=torch.float64)
        return self.means[labels] + self.spread * noise


def class_labels(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Labels as a long tensor, each in [0, num_classes) or -1 (unconditional); refused otherwise."""
    out = torch.as_tensor(list(labels), dtype=torch.long)
    if bool(((out < -1) | (out >= num_classes)).any()):
        raise ValueError(f"labels must lie in [0, {num_classes}) or be -1 (unconditional), got {out.tolist()}")
    return out


class GaussianMixtureDenoiser:
    """The `Denoiser` of a GaussianMixture: guided exact eps for a batch of (state, timestep, sample)."""

    def __init__(
        self,
        mixture: GaussianMixture,
        labels: Sequence[int],
        guidance_scale: float = 5.0,
        nan_at: tuple[int, int] | None = None,
    ) -> None:
        self.mixture = mixture
        self.labels = class_labels(labels, mixture.num_classes)
        self.guidance_scale = float(guidance_scale)
        self.nan_at = nan_at  # (sample, timestep): return NaN there, to test error handling
        self.calls = 0

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        alpha = self.mixture.alphas_cumprod.to(x.device)[timesteps.long()]
        labels = self.labels.to(x.device)[samples]
        cond = self.mixture.eps(flat, alpha, labels)
        if self.guidance_scale != 1.0:
            uncond = self.mixture.eps(flat, alpha, None)
            out = uncond + self.guidance_scale * (cond - uncond)
        else:
            out = cond
        if self.nan_at is not None:
            s, tau = self.nan_at
            hit = (samples == s) & (timesteps.long() == tau)
            out = torch.where(hit[:, None], torch.full_like(out, float("nan")), out)
        return out.reshape(x.shape)
