# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by niaffine's nipype interfaces: output names, devices, threads, errors."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from niaffine import choices
from niaffine.errors import InputError

LOGGER = logging.getLogger("niaffine.interfaces")

#: NIfTI extensions stripped from input names when output names are derived.
_NIFTI_EXTS = (".nii.gz", ".nii", ".mgz", ".img", ".hdr")


class NodeError(RuntimeError):
    """A failure inside a niaffine interface, with a one-line message naming its inputs.

    Nipype stores the traceback of a failed node in its crash file and in the
    ``NodeExecutionError`` it raises; the last line of either is this message.
    """


class NodeInputError(NodeError, InputError):
    """A :class:`NodeError` caused by bad input (an :class:`niaffine.errors.InputError`)."""


def split_nifti_name(path: str | os.PathLike) -> tuple[str, str]:
    """Split a file name into its stem and (possibly double) extension.

    Parameters
    ----------
    path : str or path-like
        A file name, with or without folders.

    Returns
    -------
    stem : str
        Base name without folders and extension.
    ext : str
        Extension, ``".nii.gz"`` counted as one.

    Examples
    --------
    >>> split_nifti_name("/data/sub-01_T1w.nii.gz")
    ('sub-01_T1w', '.nii.gz')
    >>> split_nifti_name("xfm.txt")
    ('xfm', '.txt')
    """
    name = Path(path).name
    for ext in _NIFTI_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot else (name, "")


def derived_name(
    in_file: str | os.PathLike, suffix: str, ext: str = ".nii.gz", newpath: str | None = None
) -> str:
    """Absolute path of an output named after an input.

    Parameters
    ----------
    in_file : str or path-like
        The input the output derives from.
    suffix : str
        Appended to the input's stem (e.g. ``"_mask"``).
    ext : str
        Extension of the output.
    newpath : str, optional
        Folder of the output (default: the current working directory, which is
        the node's folder when nipype runs an interface).

    Examples
    --------
    >>> derived_name("/in/sub-01_T1w.nii.gz", "_mask", newpath="/out")
    '/out/sub-01_T1w_mask.nii.gz'
    """
    stem, _ = split_nifti_name(in_file)
    return str(Path(newpath or os.getcwd()).absolute() / f"{stem}{suffix}{ext}")


def device_trait():
    """The ``device`` input of an interface that runs torch (:data:`niaffine.choices.DEVICE_CHOICES`).

    Examples
    --------
    >>> device_trait().default_value
    'cpu'
    """
    from nipype.interfaces.base import traits

    return traits.Str("cpu", usedefault=True,
                      desc=f"torch device: {', '.join(choices.DEVICE_CHOICES)}")


def use_gpu_trait():
    """The ``use_gpu`` input: CUDA, and a slot of nipype MultiProc's ``n_gpu_procs``."""
    from nipype.interfaces.base import traits

    return traits.Bool(False, usedefault=True,
                       desc="run on CUDA (marks the node for nipype's GPU slots)")


def resolve_device(device: str = "cpu", use_gpu: bool = False) -> str:
    """The torch device an interface runs on, through :func:`niaffine.devices.resolve_device`.

    ``use_gpu`` asks for CUDA; ``"auto"`` takes CUDA when torch sees it; CUDA without a GPU
    raises :class:`niaffine.errors.DeviceUnavailableError`.

    Examples
    --------
    >>> resolve_device("cpu", use_gpu=False)
    'cpu'
    """
    from niaffine.devices import resolve_device as _resolve

    return str(_resolve(device or "cpu", use_gpu=use_gpu))


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads for the duration of a block (``None`` leaves them)."""
    import torch

    if not num_threads or num_threads < 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def node_errors(interface: str, **files: object) -> Iterator[None]:
    """Re-raise any failure as a :class:`NodeError` naming the interface and its input files.

    The message names the inputs the failure's own message mentions (or all of them when it
    mentions none). A failure caused by an :class:`niaffine.errors.InputError` becomes a
    :class:`NodeInputError`, which is still an ``InputError``.

    Parameters
    ----------
    interface : str
        Name shown first in the message.
    **files
        Input roles and their paths; ``None`` and undefined values are left out.

    Examples
    --------
    >>> try:
    ...     with node_errors("ApplyAffine", input_image="/d/bold.nii.gz"):
    ...         raise ValueError("not a NIfTI file")
    ... except NodeError as err:
    ...     print(err)
    ApplyAffine failed on input_image=/d/bold.nii.gz: not a NIfTI file
    >>> try:
    ...     with node_errors("ApplyAffine", input_image="/d/bold.nii.gz", transforms="/d/x.txt"):
    ...         raise InputError("/d/x.txt: not a 4x4 affine transform")
    ... except InputError as err:
    ...     print(err)
    ApplyAffine failed on transforms=/d/x.txt: not a 4x4 affine transform
    """
    try:
        yield
    except NodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure gets the same clear message
        given = {role: value for role, value in files.items() if _is_defined(value)}
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # name the input the reason is about, or every input when it names none
        culprits = {role: value for role, value in given.items() if str(value) in reason}
        named = ", ".join(f"{role}={value}" for role, value in (culprits or given).items())
        if culprits:
            for value in culprits.values():
                reason = reason.replace(f"{value}: ", "", 1)
        error = NodeInputError if isinstance(exc, InputError) else NodeError
        raise error(f"{interface} failed on {named or 'its inputs'}: {reason}") from exc


def _is_defined(value: object) -> bool:
    from nipype.interfaces.base import isdefined

    return value is not None and isdefined(value) and value != []


def load_image(path: str | os.PathLike, role: str = "image", ndim=(3,)):
    """Load and validate an image with :func:`niaffine.io.load_image`.

    Parameters
    ----------
    path : str or path-like
    role : str
        What the image is for, used in error messages.
    ndim : sequence of int
        Accepted numbers of dimensions (trailing singleton dimensions ignored).
    """
    from niaffine.io import load_image as _load

    return _load(path, role=role, ndim=tuple(ndim))
