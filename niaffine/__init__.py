# SPDX-License-Identifier: Apache-2.0
"""niaffine: fast, correct affine registration for brain MRI."""

try:
    from ._version import __version__
except ImportError:  # pragma: no cover - only in a source tree without setuptools_scm
    __version__ = "0.1.0.dev0"

__all__ = ["__version__"]
