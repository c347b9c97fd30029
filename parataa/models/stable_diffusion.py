"""Stable Diffusion as a `Denoiser`: `UNet2DConditionModel` + CLIP text encoder (+ VAE for latent models).

Prompts are tokenized with parataa's offline CLIP tokenizer (ids identical to Stable Diffusion's) and encoded
once at construction; the empty prompt is the unconditional input. Conditional and unconditional halves run in
one batch and eps = eps_u + s (eps_c - eps_u). The embedded `tiny-sd` (pixel space, no VAE) uses this same code.
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
    load_part,
    place,
    resolve_device,
    resolve_dtype,
    resolve_weights,
)
from .tokenizer import CLIPTokenizer

__all__ = ["StableDiffusionDenoiser", "load_stable_diffusion", "SD_V1_5"]

SD_V1_5 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


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
        tokenizer: CLIPTokenizer | None = None,
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
        tokenizer = tokenizer or CLIPTokenizer(max_length=int(text_encoder.config.max_position_embeddings))
        text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        with torch.no_grad():
            ids = tokenizer([*prompts, ""]).to(self.device)
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


def check_tokenizer(root: Path, tokenizer: CLIPTokenizer, what: str) -> None:
    """A snapshot's own tokenizer (tokenizer/vocab.json) must be CLIP's: parataa tokenizes with the shipped CLIP
    vocabulary, and a snapshot with other tokens (added embeddings, another text model) would get wrong ids."""
    vocab_file = root / "tokenizer" / "vocab.json"
    if not vocab_file.is_file():
        return
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    if vocab != tokenizer.encoder:
        extra = sorted(set(vocab) - set(tokenizer.encoder))[:3]
        raise ValueError(
            f"{what}: {vocab_file} is not the CLIP vocabulary parataa tokenizes with ({len(vocab)} tokens, "
            f"{tokenizer.vocab_size} expected{'; e.g. extra ' + repr(extra) if extra else ''}); models with other "
            "tokenizers are not supported"
        )


def load_stable_diffusion(
    name_or_path: str = SD_V1_5,
    prompts: Sequence[str] = ("",),
    *,
    with_vae: bool | None = None,
    hub: bool = True,
    repo: str | None = SD_V1_5,
    **kwargs: Any,
) -> StableDiffusionDenoiser:
    """A StableDiffusionDenoiser from a diffusers-format snapshot (unet/, text_encoder/, scheduler/, vae/).

    with_vae None: use the VAE when the snapshot has one (SD v1.5), run in pixel space otherwise (tiny-sd). Only
    these components are read (and tokenizer/vocab.json, checked against parataa's CLIP tokenizer when present):
    the safety checker and feature extractor that SD's model_index.json lists are not used. hub=False:
    `name_or_path` is a local folder, never a hub id (see `_common.resolve_weights`); `repo` is the published hub
    id named in the advice of error messages (None: no advice).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    what = f"Stable Diffusion model {name_or_path}"
    parts = ("unet", "text_encoder", "scheduler")
    source = resolve_weights(name_or_path, what, parts, repo=repo, hub=hub)
    if with_vae is None:
        with_vae = source.root is None or (source.root / "vae").is_dir()
    tokenizer = CLIPTokenizer()
    if source.root is not None:
        check_tokenizer(source.root, tokenizer, what)
    unet = load_part(UNet2DConditionModel, source, "unet", what)
    text_encoder = load_part(CLIPTextModel, source, "text_encoder", what, dtype=torch.float32)
    sched = _scheduler_config(source, what)
    vae = load_part(AutoencoderKL, source, "vae", what) if with_vae else None
    if vae is not None:
        kwargs.setdefault("vae_scaling_factor", float(getattr(vae.config, "scaling_factor", 0.18215)))
    tokenizer.max_length = int(text_encoder.config.max_position_embeddings)
    den = StableDiffusionDenoiser(
        unet, text_encoder, prompts, scheduler_config=sched, vae=vae, tokenizer=tokenizer, **kwargs
    )
    den.source = source
    return den
