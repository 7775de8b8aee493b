# SPDX-License-Identifier: Apache-2.0
"""The one device resolver of niaffine: ``auto``, ``cpu``, ``cuda`` and ``cuda:N``.

Every layer (engine, interfaces, workflows, both command lines) goes through this module:

* :func:`parse_device` checks the spelling only, without importing torch. The command-line
  parsers use it through :func:`device_argument`, so a typo (``gpu``, ``cuda1``) or an
  unsupported backend (``mps``) is a syntax error (exit 2) before anything is read or written.
* :func:`resolve_device` turns ``auto`` into ``cuda`` or ``cpu`` and, with ``check=True``,
  refuses a CUDA device that torch cannot see with
  :class:`~niaffine.errors.DeviceUnavailableError` (exit 69 in both command lines).
"""

from __future__ import annotations

import argparse
import re

from niaffine.errors import DeviceUnavailableError, InputError

#: The device spellings niaffine accepts.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
_HINTS = {
    "mps": "Apple's Metal backend (mps) is not supported: niaffine runs on the CPU or on "
           "CUDA GPUs",
    "gpu": "did you mean cuda?",
    "cuda0": "did you mean cuda:0?",
}


class DeviceError(InputError):
    """A device string niaffine does not know (a typo, ``mps``, ``xla``...)."""


def parse_device(device=None) -> str:
    """The canonical spelling of a device, checked but not looked up.

    Parameters
    ----------
    device : str, torch.device or None
        ``auto`` (also ``None``), ``cpu``, ``cuda`` or ``cuda:N``, in any case and with
        surrounding blanks; a ``torch.device`` is accepted as its string.

    Returns
    -------
    str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    DeviceError
        For anything else, with a one-line message (and a hint for common slips).

    Examples
    --------
    >>> parse_device(" CUDA:01 "), parse_device(None), parse_device("cpu")
    ('cuda:1', 'auto', 'cpu')
    >>> parse_device("mps")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    niaffine.devices.DeviceError: unknown device 'mps': use auto, cpu, cuda or cuda:N (Apple's Metal...)
    """
    text = "auto" if device is None else str(device).strip().lower()
    if text in ("auto", "cpu"):
        return text
    match = _CUDA.match(text)
    if match:
        return "cuda" if match.group(1) is None else f"cuda:{int(match.group(1))}"
    key = re.sub(r"[^a-z0-9]", "", text)
    hint = _HINTS.get(key) or _HINTS.get(key.rstrip("0123456789"))
    if hint is None and key.startswith("cuda"):
        hint = "write cuda or cuda:N"
    raise DeviceError(f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N"
                      + (f" ({hint})" if hint else ""))


def device_argument(text: str) -> str:
    """``type=`` of the ``--device`` options: :func:`parse_device` as an argparse error (exit 2)."""
    try:
        return parse_device(text)
    except DeviceError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cuda_status() -> str:
    """What torch says about CUDA, for messages: build, version and GPUs visible."""
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    count = torch.cuda.device_count()
    seen = f"{count} CUDA device(s) visible" if count else "no CUDA device visible"
    return f"torch {torch.__version__}, {build}, {seen}"


def resolve_device(device=None, *, use_gpu: bool = False, check: bool = True):
    """The torch device to run on.

    Parameters
    ----------
    device : str, torch.device or None
        As :func:`parse_device` accepts (``None`` is ``auto``).
    use_gpu : bool
        Ask for CUDA whatever ``device`` says (nipype's ``use_gpu`` input): ``cpu`` and
        ``auto`` become ``cuda``.
    check : bool
        Refuse a CUDA device torch cannot see. ``False`` resolves the name only (``auto``
        still looks for a GPU), e.g. to build a graph on a submit host that will run on GPU
        nodes.

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceError
        An unknown device string.
    DeviceUnavailableError
        With ``check``: CUDA asked for but not available, or ``cuda:N`` beyond the visible GPUs.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> str(resolve_device("cuda:1", check=False))
    'cuda:1'
    """
    import torch

    name = parse_device(device)
    if use_gpu and not name.startswith("cuda"):
        name = "cuda"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or not check:
        return torch.device(name)
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"--device {name} was requested but CUDA is not available ({cuda_status()}); "
            "use --device cpu or --device auto")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"--device {name} was requested but only {torch.cuda.device_count()} CUDA "
            "device(s) are visible (see CUDA_VISIBLE_DEVICES); use --device cuda")
    return torch.device(name)
