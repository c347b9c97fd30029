"""What the benchmarks share: the DiT-XL/2- and SD-v1.5-UNet-shaped models (random weights), device timing, and an
even split of a call over the ranks."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

DIT_XL_2 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
    norm_elementwise_affine=False, activation_fn="gelu-approximate", attention_bias=True,
)
# stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json as published (the keys diffusers reads); read from
# parataa/assets/configs/sd-v1-5/unet/config.json instead where the package ships the published configs
SD_V1_5_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768, down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)


def sd_unet_config() -> dict:
    shipped = Path(__file__).resolve().parent.parent / "parataa/assets/configs/sd-v1-5/unet/config.json"
    if shipped.exists():
        return {k: v for k, v in json.loads(shipped.read_text()).items() if not k.startswith("_")}
    return dict(SD_V1_5_UNET)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def xl_denoiser(device: torch.device, labels: list[int], small: bool = False):
    """Guided DiTDenoiser over a DiT-XL/2-shaped transformer with random weights (fp16 on GPU).

    Only the cost of a call means anything: the weights are not trained. `small` swaps in a 2-layer
    transformer for CPU smoke runs.
    """
    from diffusers import DiTTransformer2DModel

    from parataa.models.dit import DiTDenoiser

    cfg = dict(DIT_XL_2, num_layers=2, num_attention_heads=4) if small else DIT_XL_2
    torch.manual_seed(0)
    with torch.device(device):  # random initialisation on the device (seconds, not a minute on the CPU)
        net = DiTTransformer2DModel(**cfg)
    return DiTDenoiser(net, labels, cfg_scale=5.0, guided_channels=3, device=device, dtype=_dtype(device))


def sd_denoiser(device: torch.device, prompts: list[str], small: bool = False):
    """Guided StableDiffusionDenoiser over an SD-v1.5-UNet-shaped UNet2DConditionModel (published config, random
    weights, fp16 on GPU, 4x64x64 latents) and a 1-layer random CLIP text encoder of SD's width (768, 77 tokens):
    the text encoder runs once per prompt, only the UNet's cost matters. `small`: a 2-block UNet on 4x16x16 latents
    for CPU smoke runs."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from parataa.models.embedded import SD_V1_5_SCHEDULER
    from parataa.models.stable_diffusion import StableDiffusionDenoiser

    cfg = sd_unet_config()
    if small:
        cfg.update(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], sample_size=16, layers_per_block=1)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                        num_attention_heads=12, max_position_embeddings=77, vocab_size=49408))
    return StableDiffusionDenoiser(unet, text, prompts, scheduler_config=SD_V1_5_SCHEDULER, cfg_scale=7.5,
                                   device=device, dtype=_dtype(device))


class EvenSplit:
    """A DistributedDenoiser whose chunk size follows each call: ceil(rows / world) states per rank, one network
    call per rank. For timing only: chunk boundaries then depend on the world size (the package's default layout,
    a fixed chunk size, is what makes results world-size invariant)."""

    graph_safe = False

    def __init__(self, dist_model) -> None:
        self.inner = dist_model

    @property
    def comm_seconds(self) -> float:
        return self.inner.comm_seconds

    def __call__(self, x, t, s):
        self.inner.chunk_size = -(-x.shape[0] // self.inner.world_size)
        return self.inner(x, t, s)


def time_call(model, rows: int, shape, device, repeat: int = 3) -> float:
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


def timed(fn):
    """(result, wall seconds) of fn(), the device synchronised before and after."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0
