"""DiT (Peebles & Xie) as a `Denoiser`: diffusers `DiTTransformer2DModel`, optional VAE for latent models.

Guidance follows DiT's own `forward_with_cfg`: the conditional and unconditional halves run in ONE batch (null
class = num_classes, 1000 for ImageNet), learned-sigma output channels are dropped, and
eps = eps_u + s (eps_c - eps_u) is applied to the first `guided_channels` channels only (DiT guides 3 of its 4
latent channels); the remaining channels take the conditional prediction. `guided_channels=None` guides all.
DiT samples with its own respaced diffusion: use `parataa.schedules.dit_schedule` (`schedule = "dit"`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._common import (
    GuidedAdapter,
    check_chunk_size,
    load_components,
    place,
    resolve_device,
    resolve_dtype,
    resolve_weights,
)

__all__ = ["DiTDenoiser", "load_dit"]


class DiTDenoiser(GuidedAdapter):
    """Guided eps of a class-conditional DiT for (state, model timestep, sample index) batches."""

    schedule = "dit"  # sample with parataa.schedules.dit_schedule (DiT's respacing), not a diffusers config
    scheduler_config = None

    def __init__(
        self,
        transformer: Any,
        class_labels: Sequence[int],
        *,
        cfg_scale: float = 4.0,
        guided_channels: int | None = 3,
        vae: Any = None,
        vae_scaling_factor: float = 0.18215,
        chunk_size: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        cfg = transformer.config
        self.num_classes = int(cfg.num_embeds_ada_norm)
        self.null_class = self.num_classes
        labels = torch.as_tensor(list(class_labels), dtype=torch.long)
        if labels.ndim != 1 or labels.numel() == 0:
            raise ValueError(f"class_labels must be a non-empty list of ints, got {list(class_labels)!r}")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(
                f"class_labels must lie in [0, {self.num_classes}), got {bad.tolist()}; the null class "
                f"{self.null_class} is used internally for the unconditional half"
            )
        if not isinstance(cfg_scale, (int, float)) or not cfg_scale == cfg_scale:
            raise ValueError(f"cfg_scale must be a number, got {cfg_scale!r}")
        if guided_channels is not None and not (1 <= int(guided_channels)):
            raise ValueError(f"guided_channels must be a positive integer or None (all), got {guided_channels!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.chunk_size = check_chunk_size(chunk_size)
        self.transformer = place(transformer, self.device, self.dtype)
        self.vae = None if vae is None else place(vae, self.device, self.dtype)
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.labels = labels.to(self.device)
        self.cfg_scale = float(cfg_scale)
        self.guided_channels = None if guided_channels is None else int(guided_channels)
        self.in_channels = int(cfg.in_channels)
        size = int(cfg.sample_size)
        self.sample_shape = (self.in_channels, size, size)
        self.calls = 0

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def _eval(self, x: torch.Tensor, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.in_channels
        if self.guided:
            n = x.shape[0]
            xb = torch.cat([x, x])
            tb = torch.cat([tau, tau])
            yb = torch.cat([y, torch.full_like(y, self.null_class)])
            out = self.transformer(xb, timestep=tb, class_labels=yb).sample[:, :c]
            eps_c, eps_u = out[:n], out[n:]
            g = c if self.guided_channels is None else min(self.guided_channels, c)
            eps = eps_c.clone()
            eps[:, :g] = eps_u[:, :g] + self.cfg_scale * (eps_c[:, :g] - eps_u[:, :g])
            return eps
        return self.transformer(x, timestep=tau, class_labels=y).sample[:, :c]

    def _condition(self, samples: torch.Tensor) -> torch.Tensor:
        return self.labels[samples]


def load_dit(
    name_or_path: str,
    class_labels: Sequence[int] = (0,),
    *,
    components: Sequence[Any],
    hub: bool = True,
    repo: str | None = None,
    **kwargs: Any,
) -> DiTDenoiser:
    """A DiTDenoiser from a diffusers-format snapshot (hub id or local folder) holding `components`
    (registry.COMPONENTS: transformer/, and vae/ for a latent model).

    hub=False: `name_or_path` is a local folder, never a hub id (see `_common.resolve_weights`); `repo` is the
    published hub id named in the advice of error messages (None: no advice).
    The published DiT config names the class `Transformer2DModel`; diffusers maps it to `DiTTransformer2DModel`.
    """
    what = f"DiT model {name_or_path}"
    required = [c.folder for c in components if not c.optional]
    source = resolve_weights(name_or_path, what, required, repo=repo, hub=hub)
    parts = load_components(components, source, what)
    transformer, vae = parts["transformer"], parts.get("vae")
    if vae is not None:
        kwargs.setdefault("vae_scaling_factor", float(getattr(vae.config, "scaling_factor", 0.18215)))
    den = DiTDenoiser(transformer, class_labels, vae=vae, **kwargs)
    den.source = source
    return den
