"""Stable Diffusion as a `Denoiser`: `UNet2DConditionModel` + CLIP text encoder (+ VAE for latent models).

Prompts are tokenized by `transformers.CLIPTokenizer` from the snapshot's `tokenizer/` folder (vocab.json,
merges.txt), as diffusers' StableDiffusionPipeline does, and encoded once at construction; the empty prompt is
the unconditional input. Conditional and unconditional halves run in one batch and eps = eps_u + s (eps_c - eps_u).
The embedded `tiny-sd` (pixel space, no VAE) uses this same code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._common import (
    GuidedAdapter,
    WeightsNotFoundError,
    WeightsSource,
    check_chunk_size,
    load_components,
    load_part,
    place,
    resolve_device,
    resolve_dtype,
    resolve_weights,
)

__all__ = ["StableDiffusionDenoiser", "load_stable_diffusion", "clip_tokenizer", "token_ids"]


def clip_tokenizer(path: str | Path | None = None) -> Any:
    """`transformers.CLIPTokenizer` of a snapshot's tokenizer folder; None: the CLIP tokenizer that ships in the
    embedded tiny-sd (`embedded.CLIP_TOKENIZER`, Stable Diffusion v1.5's vocabulary and merges)."""
    from transformers import CLIPTokenizer

    from .embedded import CLIP_TOKENIZER

    return CLIPTokenizer.from_pretrained(str(path or CLIP_TOKENIZER))


def token_ids(tokenizer: Any, prompts: Sequence[str], length: int = 77) -> torch.Tensor:
    """Ids [B, length] as Stable Diffusion feeds its text encoder: start token, the text truncated to length - 2
    ids, end token, end-token padding."""
    return tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")[
        "input_ids"
    ]


class StableDiffusionDenoiser(GuidedAdapter):
    """Guided eps of a text-conditioned UNet for (state, model timestep, sample index) batches."""

    schedule = "diffusers"

    def __init__(
        self,
        unet: Any,
        text_encoder: Any,
        prompts: Sequence[str],
        *,
        scheduler_config: dict[str, Any],
        cfg_scale: float = 7.5,
        vae: Any = None,
        vae_scaling_factor: float = 0.18215,
        tokenizer: Any = None,
        chunk_size: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        if not isinstance(cfg_scale, (int, float)) or not cfg_scale == cfg_scale:
            raise ValueError(f"cfg_scale must be a number, got {cfg_scale!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.chunk_size = check_chunk_size(chunk_size)
        self.unet = place(unet, self.device, self.dtype)
        self.vae = None if vae is None else place(vae, self.device, self.dtype)
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.scheduler_config = dict(scheduler_config)
        self.cfg_scale = float(cfg_scale)
        self.prompts = prompts
        tokenizer = tokenizer or clip_tokenizer()
        length = int(text_encoder.config.max_position_embeddings)
        text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        with torch.no_grad():
            ids = token_ids(tokenizer, [*prompts, ""], length).to(self.device)
            emb = text_encoder(ids)[0].to(self.dtype)
        self.cond = emb[:-1]  # [N, L, D]
        self.uncond = emb[-1:]  # [1, L, D]
        c = int(unet.config.in_channels)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (c, int(h), int(w))
        self.calls = 0

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def _eval(self, x: torch.Tensor, tau: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        cond = self.cond[idx]
        if self.guided:
            n = x.shape[0]
            emb = torch.cat([cond, self.uncond.expand(n, -1, -1)])
            out = self.unet(torch.cat([x, x]), torch.cat([tau, tau]), encoder_hidden_states=emb).sample
            eps_c, eps_u = out[:n], out[n:]
            return eps_u + self.cfg_scale * (eps_c - eps_u)
        return self.unet(x, tau, encoder_hidden_states=cond).sample

    def _condition(self, samples: torch.Tensor) -> torch.Tensor:
        return samples


def _scheduler_config(source: WeightsSource, what: str) -> dict[str, Any]:
    if source.root is not None:
        f = source.root / "scheduler" / "scheduler_config.json"
        if not f.is_file():
            raise WeightsNotFoundError(f"{what}: no scheduler/scheduler_config.json under {source.root}")
        return json.loads(f.read_text())
    from diffusers import DDIMScheduler

    return dict(load_part(DDIMScheduler, source, "scheduler", what).config)


def check_vocabulary(tokenizer: Any, text_encoder: Any, what: str) -> None:
    """Every id the snapshot's tokenizer can give must have an embedding in its text encoder."""
    n, have = len(tokenizer), int(text_encoder.config.vocab_size)
    if n > have:
        extra = sorted(t for t, i in tokenizer.get_vocab().items() if i >= have)[:3]
        raise ValueError(
            f"{what}: tokenizer/ has {n} tokens (e.g. {extra}) but the text encoder embeds {have} "
            "(text_encoder/config.json vocab_size); give a snapshot whose tokenizer and text encoder belong together"
        )


def load_stable_diffusion(
    name_or_path: str,
    prompts: Sequence[str] = ("",),
    *,
    components: Sequence[Any],
    hub: bool = True,
    repo: str | None = None,
    **kwargs: Any,
) -> StableDiffusionDenoiser:
    """A StableDiffusionDenoiser from a diffusers-format snapshot: `components` (registry.COMPONENTS: unet/,
    text_encoder/, vae/), tokenizer/ and scheduler/.

    Without a VAE (tiny-sd's is optional and absent) the model runs in pixel space. Only these folders are read:
    the safety checker and feature extractor that SD's model_index.json lists are not used. hub=False:
    `name_or_path` is a local folder, never a hub id (see `_common.resolve_weights`); `repo` is the published hub
    id named in the advice of error messages (None: no advice).
    """
    from transformers import CLIPTokenizer

    what = f"Stable Diffusion model {name_or_path}"
    required = [c.folder for c in components if not c.optional]
    source = resolve_weights(name_or_path, what, [*required, "tokenizer", "scheduler"], repo=repo, hub=hub)
    parts = load_components(components, source, what)
    unet, text_encoder, vae = parts["unet"], parts["text_encoder"], parts.get("vae")
    tokenizer = load_part(CLIPTokenizer, source, "tokenizer", what)
    check_vocabulary(tokenizer, text_encoder, what)
    sched = _scheduler_config(source, what)
    if vae is not None:
        kwargs.setdefault("vae_scaling_factor", float(getattr(vae.config, "scaling_factor", 0.18215)))
    den = StableDiffusionDenoiser(
        unet, text_encoder, prompts, scheduler_config=sched, vae=vae, tokenizer=tokenizer, **kwargs
    )
    den.source = source
    return den
