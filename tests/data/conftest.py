"""Fixtures of the data tests: run torch single-threaded (tiny shapes gain nothing from intra-op
threads, and on a shared 2-core box OpenMP spin-waits make them several times slower)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
