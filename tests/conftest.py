from __future__ import annotations

import pytest
import torch

from parataa import draw_noise, from_diffusers_config
from parataa.models import GaussianMixture, GaussianMixtureDenoiser

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    return GaussianMixture(dim=16, num_classes=4, spread=0.15, seed=0)


def gmm_problem(mixture: GaussianMixture, steps: int = 20, sampler: str = "ddim", seeds=(0, 1, 2), cfg=5.0):
    sched = from_diffusers_config(mixture.scheduler_config, steps, sampler=sampler)
    noise = draw_noise(list(seeds), steps, (mixture.dim,))
    model = GaussianMixtureDenoiser(mixture, [s % mixture.num_classes for s in seeds], cfg)
    return model, sched, noise
