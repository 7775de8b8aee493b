# SPDX-License-Identifier: Apache-2.0
"""The registration engine: pure torch and numpy, world-space (RAS mm) matrices out."""

from .register import register, register_batch, resolve_device
from .resample import resample_image
from .result import LevelReport, RegistrationResult
from .series import SeriesResult, register_series
from .volume import Volume, as_volume

__all__ = [
    "LevelReport",
    "RegistrationResult",
    "SeriesResult",
    "Volume",
    "as_volume",
    "register",
    "register_batch",
    "register_series",
    "resample_image",
    "resolve_device",
]
