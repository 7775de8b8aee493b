# SPDX-License-Identifier: Apache-2.0
"""Benchmark test settings: runners set torch's thread count; put it back after each test."""

import pytest


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
