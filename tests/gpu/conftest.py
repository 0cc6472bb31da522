"""The GPU suite (`pytest -m gpu`): runs where CUDA is, skips cleanly elsewhere.

PARAKEET_TEST_DEVICE=cpu runs the same tests on the CPU (a smoke test of the suite itself, for
machines without a GPU); the product never reads it.
"""
import os

import pytest
import torch

DEVICE = os.environ.get("PARAKEET_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)


def pytest_collection_modifyitems(config, items):
    if DEVICE is not None:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (or PARAKEET_TEST_DEVICE=cpu for a smoke run)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
