"""Models by name for jobs: the denoiser, its schedule and its state shape.

`gmm` (the analytic Gaussian mixture) is built here directly; every other name goes through
`parataa.models.registry.build_denoiser`. When the registry also serves `gmm`, drop it from `_LOCAL`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["LOCAL_MODELS", "KNOWN_SHAPES", "build_model", "sample_shape"]

_LOCAL = ("gmm",)  # names built in this module; everything else comes from parataa.models.registry
LOCAL_MODELS = _LOCAL

# State shapes of the registry's models, so noise can be drawn without loading weights (the driver node
# may have no GPU and no weights). The registry's own answer wins when it offers one.
KNOWN_SHAPES: dict[str, tuple[int, ...]] = {
    "dit-xl-2-256": (4, 32, 32),
    "sd-v1-5": (4, 64, 64),
}

GMM_DEFAULTS = {"dim": 64, "classes": 10, "spread": 0.15, "seed": 0}


def _gmm_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(GMM_DEFAULTS))
    if unknown:
        raise ValueError(f"models[gmm].options: unknown keys {unknown}; allowed: {sorted(GMM_DEFAULTS)}")
    return {**GMM_DEFAULTS, **options}


def sample_shape(name: str, options: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """The state shape of model `name` without building it."""
    options = dict(options or {})
    if name in _LOCAL:
        return (int(_gmm_options(options)["dim"]),)
    if "sample_shape" in options:
        return tuple(int(s) for s in options["sample_shape"])
    try:
        from ..models import registry
    except ImportError:
        registry = None
    fn = getattr(registry, "sample_shape", None) if registry is not None else None
    if fn is not None:
        return tuple(int(s) for s in fn(name))
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    if registry is not None:
        # Small models: build one (CPU, one condition) and ask it. Large ones are in KNOWN_SHAPES.
        cond: Any = 0 if registry.is_class_conditional(name) else "a"
        _, info = registry.build_denoiser(name, [cond], device="cpu", path=options.get("path"))
        return tuple(int(s) for s in info["sample_shape"])
    raise ValueError(
        f"model {name!r}: state shape unknown (parataa.models.registry is not importable); "
        "set models[].options.sample_shape in the study config"
    )


def build_model(
    name: str,
    conditions: Sequence[Any],
    *,
    sampler: str,
    steps: int,
    cfg_scale: float,
    device: str = "cpu",
    dtype: str | None = None,
    chunk_size: int | None = None,
    path: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[Any, Any, tuple[int, ...], dict[str, Any]]:
    """(denoiser, schedule, sample_shape, info) for one shard of samples with these conditions."""
    from ..schedules import dit_schedule, from_diffusers_config

    options = dict(options or {})
    options.pop("sample_shape", None)
    if name in _LOCAL:
        from ..models.gmm import GaussianMixture, GaussianMixtureDenoiser

        o = _gmm_options(options)
        mix = GaussianMixture(int(o["dim"]), int(o["classes"]), float(o["spread"]), int(o["seed"]))
        labels = [int(c) % mix.num_classes for c in conditions]
        den = GaussianMixtureDenoiser(mix, labels, cfg_scale)
        sched = from_diffusers_config(mix.scheduler_config, steps, sampler=sampler)
        return den, sched, (mix.dim,), {"image": False}
    try:
        from ..models import registry
    except ImportError as e:
        raise ValueError(
            f"model {name!r} needs parataa.models.registry, which is not importable here ({e}); "
            "use model 'gmm' or install a parataa with the registry"
        ) from e
    kwargs: dict[str, Any] = dict(cfg_scale=cfg_scale, device=device, path=path)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    den, info = registry.build_denoiser(name, list(conditions), **kwargs)
    if info.get("schedule") == "dit":
        sched = dit_schedule(steps, sampler=sampler)
    else:
        sched = from_diffusers_config(info["scheduler_config"], steps, sampler=sampler)
    return den, sched, tuple(int(s) for s in info["sample_shape"]), info
