"""Shared test set-up: one intra-op thread (shared 2-core machines) and quiet transformers logging."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes tens of seconds (torch.compile, training); deselect with -m 'not slow'")
