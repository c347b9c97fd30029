"""Every model by name: the one place that turns (name, conditions, options) into a Denoiser and its schedule.

    gmm           analytic Gaussian mixture (64-d, 10 classes), exact eps, no weights
    tiny-dit      embedded class-conditional DiT on 16x16 MNIST digits (ships with parataa)
    tiny-sd       embedded text-conditioned UNet + CLIP text encoder on the same digits (ships with parataa)
    tiny-flow     embedded class-conditional flow-matching DiT on the same digits (velocity; sampler flow-euler)
    dit-xl-2-256  facebook/DiT-XL-2-256 (hub id or local snapshot; DiT guides 3 of 4 latent channels)
    sd-v1-5       stable-diffusion-v1-5/stable-diffusion-v1-5 (hub id or local snapshot)

`build_denoiser` returns (denoiser, spec): `spec(num_steps, sampler=..., eta=...)` builds the matching
`Schedule` (DiT's respacing for DiT models, the diffusers tables otherwise; sampler "dpmpp-2m" gives a
`parataa.families.DPMSchedule`, "flow-euler" the flow table of flow models), and `spec` also answers
`spec["sample_shape"]`, `spec["schedule"]` ("dit", "diffusers" or "flow") and `spec["scheduler_config"]`; network models
also answer `spec["source"]` (the name or path given) and `spec["weights"]` (where the weights were found: a local
path, or a hub id with its cached snapshot and revision). `weights.weights_identity` adds the files' sha256.

A weights path (`path=`, `--model-path`) is a local folder, or a hub id `owner/name` that is not a folder here;
a path that does not exist fails at once (see `_common.resolve_weights`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import conditions
from ..conditions import MODELS
from ..schedules import Schedule, dit_schedule, from_diffusers_config

__all__ = [
    "MODELS",
    "GMM_OPTIONS",
    "HUB_IDS",
    "COMPONENTS",
    "Component",
    "ModelSpec",
    "build_denoiser",
    "default_weights",
    "is_class_conditional",
    "default_cfg_scale",
    "model_options",
    "sample_shape",
]

_SHAPES = {
    "gmm": (64,),
    "tiny-dit": (1, 16, 16),
    "tiny-sd": (1, 16, 16),
    "tiny-flow": (1, 16, 16),
    "dit-xl-2-256": (4, 32, 32),
    "sd-v1-5": (4, 64, 64),
}
_DEFAULT_CFG = {"gmm": 5.0, "tiny-dit": 5.0, "tiny-sd": 5.0, "tiny-flow": 5.0, "dit-xl-2-256": 4.0, "sd-v1-5": 7.5}


# the published hub ids of the real models
HUB_IDS = {"dit-xl-2-256": "facebook/DiT-XL-2-256", "sd-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}


@dataclass(frozen=True)
class Component:
    """One network folder of a model's snapshot: what the loaders load, `weights.weights_identity` hashes and
    `synthetic` writes."""

    folder: str
    library: str  # "diffusers" or "transformers": the class's library, which also names the weight files
    cls: str
    optional: bool = False  # may be absent from a local folder (the loader then goes without it)


_TRANSFORMER = Component("transformer", "diffusers", "DiTTransformer2DModel")
_UNET = Component("unet", "diffusers", "UNet2DConditionModel")
_TEXT = Component("text_encoder", "transformers", "CLIPTextModel")
_VAE = Component("vae", "diffusers", "AutoencoderKL")
# per network model, in loading (and synthetic building) order; the embedded tiny-sd runs in pixel space
COMPONENTS: dict[str, tuple[Component, ...]] = {
    "tiny-dit": (_TRANSFORMER,),
    "tiny-flow": (_TRANSFORMER,),
    "dit-xl-2-256": (_TRANSFORMER, _VAE),
    "tiny-sd": (_UNET, _TEXT, Component("vae", "diffusers", "AutoencoderKL", optional=True)),
    "sd-v1-5": (_UNET, _TEXT, _VAE),
}


def _check_name(name: str) -> None:
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"model must be one of {MODELS}, got {name!r}{hint}")


def default_weights(name: str) -> str:
    """Where model `name`'s weights are when no path is given: its hub id, or the embedded model's folder."""
    _check_name(name)
    if name in HUB_IDS:
        return HUB_IDS[name]
    if name == "gmm":
        raise ValueError("model gmm is analytic and has no weights")
    from .embedded import embedded_path

    return str(embedded_path(name))


def is_class_conditional(name: str) -> bool:
    """True: conditions are class labels (ints). False: conditions are prompts (strings)."""
    _check_name(name)
    return conditions.is_class_conditional(name)


# The analytic mixture's options (a study config's `models[].options`) and their defaults. Network models take
# only `sample_shape`: the state shape of weights other than the defaults (e.g. a local snapshot at another
# resolution), so noise can be drawn before they are loaded.
GMM_OPTIONS: dict[str, Any] = {"dim": 64, "classes": conditions.GMM_DEFAULT_CLASSES, "spread": 0.15, "seed": 0}


def model_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`options` of model `name` checked (unknown keys refused, with the allowed ones named) and, for gmm, with
    every default filled in."""
    _check_name(name)
    options = dict(options or {})
    allowed = GMM_OPTIONS if name == "gmm" else {"sample_shape": None}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(allowed), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"model {name} options: unknown key(s) {unknown}; allowed: {sorted(allowed)}{hint}")
    if name == "gmm":
        return {**GMM_OPTIONS, **options}
    return options


def sample_shape(
    name: str, options: Mapping[str, Any] | None = None, path: str | Path | None = None
) -> tuple[int, ...]:
    """The state shape of model `name` without loading weights (noise can be drawn first): gmm (dim,); a network
    model its `sample_shape` option, else what the network config in the weights folder `path` says (in_channels x
    sample_size^2 of transformer/ or unet/: a checkpoint of another resolution), else its default weights'."""
    options = model_options(name, options)
    if name == "gmm":
        return (int(options["dim"]),)
    if options.get("sample_shape") is not None:
        return tuple(int(s) for s in options["sample_shape"])
    if path is not None:
        for part in ("transformer", "unet"):
            cfg = Path(path).expanduser() / part / "config.json"
            if cfg.is_file():
                c = json.loads(cfg.read_text())
                size = c["sample_size"] if isinstance(c["sample_size"], int) else c["sample_size"][0]
                return (int(c["in_channels"]), int(size), int(size))
    return _SHAPES[name]


def default_cfg_scale(name: str) -> float:
    _check_name(name)
    return _DEFAULT_CFG[name]


@dataclass(frozen=True)
class ModelSpec:
    """What a solver needs to know of a model besides eps: its schedule family and its state shape."""

    name: str
    schedule: str  # "dit" (DiT's respacing), "diffusers" (scheduler_config tables) or "flow" (flow matching)
    sample_shape: tuple[int, ...]
    scheduler_config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(
        self, num_steps: int, sampler: str = "ddim", eta: float | None = None, final_noise: str | None = None
    ) -> Schedule:
        """The schedule; final_noise None is the family's own rule ("none" for DiT, "diffusers" otherwise).
        sampler "dpmpp-2m": DPM-Solver++(2M) of the model's diffusers config (DiT models: DiT's training betas);
        flow models take only "flow-euler"."""
        from ..families import DIT_SCHEDULER, dpmpp_2m_schedule, flow_euler_schedule

        if self.schedule == "flow" or sampler == "flow-euler":
            if self.schedule != "flow" or sampler != "flow-euler":
                raise ValueError(
                    f"model {self.name} is {'a flow-matching' if self.schedule == 'flow' else 'a diffusion'} model: "
                    f"sampler {sampler!r} does not apply; use "
                    f"{'flow-euler' if self.schedule == 'flow' else 'ddim, ddpm or dpmpp-2m'}"
                )
            return flow_euler_schedule(self.scheduler_config or {}, num_steps)
        if sampler == "dpmpp-2m":
            return dpmpp_2m_schedule(self.scheduler_config or DIT_SCHEDULER, num_steps)
        if self.schedule == "dit":
            return dit_schedule(num_steps, sampler=sampler, eta=eta, final_noise=final_noise or "none")
        assert self.scheduler_config is not None
        return from_diffusers_config(
            self.scheduler_config, num_steps, sampler=sampler, eta=eta, final_noise=final_noise or "diffusers"
        )

    def __getitem__(self, key: str) -> Any:
        if key in ("name", "schedule", "sample_shape", "scheduler_config"):
            return getattr(self, key)
        if key == "image":  # does the model's decode give images
            return self.name != "gmm"
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


def _labels(name: str, conditions: Sequence[Any], num_classes: int) -> list[int]:
    out = []
    for c in conditions:
        try:
            v = int(c)
        except (TypeError, ValueError):
            raise ValueError(f"conditions of {name} must be class labels (ints), got {c!r}") from None
        if not 0 <= v < num_classes:
            raise ValueError(f"conditions of {name} must be class labels in [0, {num_classes}), got {v}")
        out.append(v)
    if not out:
        raise ValueError(f"conditions must name at least one class for {name}, got none")
    return out


def _prompts(name: str, conditions: Sequence[Any]) -> list[str]:
    from .embedded import digit_prompt

    out = []
    for c in conditions:
        if isinstance(c, int) and not isinstance(c, bool) and name == "tiny-sd":
            out.append(digit_prompt(c))  # a digit label is shorthand for its training prompt
        elif isinstance(c, str):
            out.append(c)
        else:
            raise ValueError(f"conditions of {name} must be prompts (strings), got {c!r}")
    if not out:
        raise ValueError(f"conditions must hold at least one prompt for {name}, got none")
    return out


def build_denoiser(
    name: str,
    conditions: Sequence[Any],
    *,
    cfg_scale: float | None = None,
    device: Any = "cpu",
    dtype: Any = None,
    chunk_size: int | None = None,
    path: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[Any, ModelSpec]:
    """(denoiser, spec) for model `name`, one condition per sample; `path` overrides the weights' location,
    `options` are the model's options (`model_options`: gmm dim, classes, spread, seed)."""
    options = model_options(name, options)
    conditions = list(conditions)
    cfg = _DEFAULT_CFG[name] if cfg_scale is None else float(cfg_scale)
    if name == "gmm":
        from .gmm import GaussianMixture, GaussianMixtureDenoiser

        if path is not None:
            raise ValueError("model gmm is analytic and takes no path; drop --model-path")
        o = options
        mix = GaussianMixture(int(o["dim"]), int(o["classes"]), float(o["spread"]), int(o["seed"]))
        den = GaussianMixtureDenoiser(mix, _labels(name, conditions, mix.num_classes), cfg)
        return den, ModelSpec(name, "diffusers", (mix.dim,), dict(mix.scheduler_config))
    src = default_weights(name) if path is None else str(path)
    # a path the user gave is a local folder; only the published hub id (the default) may come from the hub
    kw = dict(cfg_scale=cfg, device=device, dtype=dtype, chunk_size=chunk_size, components=COMPONENTS[name])
    kw.update(hub=src == HUB_IDS.get(name), repo=HUB_IDS.get(name))
    if name == "tiny-flow":
        from .flow import load_flow_dit

        flow_kw = dict(cfg_scale=cfg, device=device, dtype=dtype, chunk_size=chunk_size)
        den = load_flow_dit(src, _labels(name, conditions, 10), hub=kw["hub"], **flow_kw)
        extra = {"source": src, "weights": den.source.record()}
        return den, ModelSpec(name, "flow", den.sample_shape, den.scheduler_config, extra)
    if name in ("tiny-dit", "dit-xl-2-256"):
        from .dit import load_dit

        labels = _labels(name, conditions, 10 if name == "tiny-dit" else 1000)
        den = load_dit(src, labels, guided_channels=None if name == "tiny-dit" else 3, **kw)
        return den, ModelSpec(name, "dit", den.sample_shape, None, {"source": src, "weights": den.source.record()})
    from .stable_diffusion import load_stable_diffusion

    den = load_stable_diffusion(src, _prompts(name, conditions), **kw)
    extra = {"source": src, "weights": den.source.record()}
    return den, ModelSpec(name, "diffusers", den.sample_shape, den.scheduler_config, extra)
