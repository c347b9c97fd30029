"""Which sampler each model takes, checked before anything is built (torch-free: the workflow's dry run uses it).

    ddim, ddpm   DDIM / DDPM steps of a diffusion (eps) model
    dpmpp-2m     DPM-Solver++(2M) of a diffusion model (`parataa.families.dpmpp_2m_schedule`)
    flow-euler   Euler steps of a flow-matching (velocity) model (`parataa.families.flow_euler_schedule`)

Flow-matching models (tiny-flow) take flow-euler only; every other model takes ddim, ddpm and dpmpp-2m. Used by
the command line (`--sampler`), the model registry's schedules and the study config (a model x sampler pair that
does not apply is skipped: workflow/README.md).
"""

from __future__ import annotations

__all__ = ["SAMPLERS", "FLOW_MODELS", "samplers_for", "applies", "default_sampler", "check_sampler"]

SAMPLERS = ("ddim", "ddpm", "dpmpp-2m", "flow-euler")
FLOW_MODELS = ("tiny-flow",)  # models whose network predicts a velocity (flow matching)
_DIFFUSION_SAMPLERS = ("ddim", "ddpm", "dpmpp-2m")
_FLOW_SAMPLERS = ("flow-euler",)


def samplers_for(model: str) -> tuple[str, ...]:
    """The samplers model `model` takes."""
    return _FLOW_SAMPLERS if model in FLOW_MODELS else _DIFFUSION_SAMPLERS


def applies(model: str, sampler: str) -> bool:
    return sampler in samplers_for(model)


def default_sampler(model: str) -> str:
    """The sampler of a model when none is named: flow-euler for flow models, ddim otherwise."""
    return samplers_for(model)[0]


def check_sampler(model: str, sampler: str, flag: str = "sampler") -> None:
    """Raise ValueError naming the model, the sampler and the samplers it takes, when they do not go together."""
    if sampler not in SAMPLERS:
        raise ValueError(f"{flag} must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if not applies(model, sampler):
        kind = "a flow-matching (velocity) model" if model in FLOW_MODELS else "a diffusion (eps) model"
        raise ValueError(
            f"{flag} {sampler}: model {model} is {kind} and does not take sampler {sampler}; use "
            f"{' or '.join(samplers_for(model))} with {model}"
            + ("" if model in FLOW_MODELS else f", or flow-euler with {', '.join(FLOW_MODELS)}")
        )
