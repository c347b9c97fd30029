from __future__ import annotations

import pytest
import torch

from parataa.models import GaussianMixture


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    return GaussianMixture(dim=16, num_classes=4, spread=0.15, seed=0)

