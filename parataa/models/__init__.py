"""Denoiser adapters: analytic test models, the embedded trained models, DiT and Stable Diffusion."""

from .gmm import GaussianMixture, GaussianMixtureDenoiser

__all__ = ["GaussianMixture", "GaussianMixtureDenoiser"]
