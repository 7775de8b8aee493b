# SPDX-License-Identifier: Apache-2.0
"""Engine test settings: one torch thread (the test machines are small and shared).

Session scope, so that it is in place before module-scoped fixtures register anything: on a
loaded two-core machine, two torch threads made the same fixture ten times slower.
"""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
