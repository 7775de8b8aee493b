# SPDX-License-Identifier: Apache-2.0
"""The registration engine: pure torch and numpy, world-space (RAS mm) matrices out."""

from ..threads import configure_environment

# OpenMP reads its wait policy when torch loads: set it first (see niaffine.threads).
configure_environment()

from ..presets import PRESETS  # noqa: E402
from .register import register, register_batch, resolve_device  # noqa: E402
from .resample import resample_image  # noqa: E402
from .result import LevelReport, RegistrationResult  # noqa: E402
from .series import SeriesResult, register_series  # noqa: E402
from .volume import Volume, as_volume  # noqa: E402

__all__ = [
    "PRESETS",
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
