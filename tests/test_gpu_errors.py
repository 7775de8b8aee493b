# SPDX-License-Identifier: Apache-2.0
"""A CUDA out-of-memory error becomes one clear RegistrationError naming the image."""

import importlib

import nibabel as nb
import numpy as np
import pytest
import torch

from niaffine.engine import register as register_one
from niaffine.errors import RegistrationError


def test_cuda_out_of_memory_is_a_clear_registration_error(monkeypatch, tmp_path):
    reg = importlib.import_module("niaffine.engine.register")  # the function shadows it

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(reg, "_register_batch", out_of_memory)
    path = tmp_path / "sub-01_T1w.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)
    img = nb.load(path)
    with pytest.raises(RegistrationError) as info:
        register_one(img, img, device="cuda")
    message = str(info.value)
    assert "sub-01_T1w.nii.gz" in message and "out of memory" in message
    assert "\n" not in message
