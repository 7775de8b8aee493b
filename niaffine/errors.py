# SPDX-License-Identifier: Apache-2.0
"""Exceptions with one-line, user-facing messages.

Every error a user can cause (a missing file, an image that is not 3D, masks on the wrong grid)
is raised as an :class:`InputError` whose message names the file and the problem on one line, so
command lines can print it as is and exit with a documented code.
"""


class NiaffineError(Exception):
    """Base class of niaffine's own errors."""


class InputError(NiaffineError, ValueError):
    """Bad input: the message is one line naming the file (or option) and the problem."""


class RegistrationError(NiaffineError, RuntimeError):
    """The optimisation could not produce a usable transform (e.g. the metric became NaN)."""


class DeviceUnavailableError(InputError):
    """The requested compute device (e.g. CUDA) is not available on this machine."""


class DeviceMemoryError(RegistrationError):
    """The compute device ran out of memory (CUDA out-of-memory): fewer or smaller jobs fit."""
