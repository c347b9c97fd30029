"""Denoiser adapters: analytic test models, the embedded trained models, DiT and Stable Diffusion.

Heavy imports (diffusers, transformers) happen only when a network adapter is used; `registry.build_denoiser`
builds any model by name, `weights_identity` says which weights it loaded (source, sha256, synthetic or not), and
`python -m parataa.models.synthetic` writes random-weight checkpoints in the published layout of the paper's models.
"""

from ._common import WeightsNotFoundError
from .gmm import GaussianMixture, GaussianMixtureDenoiser
from .weights import weights_identity

__all__ = ["GaussianMixture", "GaussianMixtureDenoiser", "WeightsNotFoundError", "weights_identity"]
