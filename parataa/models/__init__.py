"""Denoiser adapters: analytic test models, the embedded trained models, DiT and Stable Diffusion.

Heavy imports (diffusers, transformers) happen only when a network adapter is used; `registry.build_denoiser`
builds any model by name.
"""

from ._common import WeightsNotFoundError
from .gmm import GaussianMixture, GaussianMixtureDenoiser

__all__ = ["GaussianMixture", "GaussianMixtureDenoiser", "WeightsNotFoundError"]
