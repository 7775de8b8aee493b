# SPDX-License-Identifier: Apache-2.0
"""Small helpers shared by niaffine's workflow factories (build time only)."""

from __future__ import annotations


def resolve_build_device(device: str = "cpu") -> str:
    """The device nodes are built for: ``"auto"`` becomes ``"cuda"`` where torch sees one.

    A CUDA device is not looked up (a graph may be built on a submit host for GPU nodes);
    an unknown string raises :class:`niaffine.devices.DeviceError`. See :mod:`niaffine.devices`.

    Examples
    --------
    >>> resolve_build_device("cpu"), resolve_build_device("cuda:1")
    ('cpu', 'cuda:1')
    """
    from niaffine.devices import resolve_device

    return str(resolve_device(device or "cpu", check=False))


def compute_settings(device: str, omp_nthreads: int) -> dict:
    """Interface inputs and node resources of a node that may run on a GPU.

    A CUDA node takes one CPU slot and one of MultiProc's ``n_gpu_procs`` slots (nipype
    counts ``n_procs`` against both, so it must be 1); a CPU node takes ``omp_nthreads``.

    Returns
    -------
    dict
        ``inputs`` (``device``, ``use_gpu``, ``num_threads``) and ``n_procs``.

    Examples
    --------
    >>> compute_settings("cpu", 4)
    {'inputs': {'device': 'cpu', 'use_gpu': False, 'num_threads': 4}, 'n_procs': 4}
    >>> compute_settings("cuda", 4)
    {'inputs': {'device': 'cuda', 'use_gpu': True, 'num_threads': 1}, 'n_procs': 1}
    """
    device = resolve_build_device(device)
    gpu = device.startswith("cuda")
    threads = 1 if gpu else max(1, int(omp_nthreads))
    return {
        "inputs": {"device": device, "use_gpu": gpu, "num_threads": threads},
        "n_procs": threads,
    }
