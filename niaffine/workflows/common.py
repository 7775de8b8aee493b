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


def registration_node(interface, *, dof, metric, seed, device, omp_nthreads, mem_gb,
                      name="registration", **inputs):
    """A node running a registration ``interface`` on ``device``, with its resources.

    Parameters
    ----------
    interface : class
        :class:`~niaffine.interfaces.registration.AffineRegistration` or the batched one.
    dof, metric, seed
        The interface's ``dof``, ``metric`` and ``random_seed``.
    device, omp_nthreads
        As :func:`compute_settings`.
    mem_gb : float
        Memory estimate of the node.
    name : str
        Node name.
    **inputs
        Further interface inputs (e.g. ``preset="template"``).

    Examples
    --------
    >>> from niaffine.interfaces.registration import AffineRegistration
    >>> node = registration_node(AffineRegistration, dof=6, metric="mi", seed=0,
    ...                          device="cpu", omp_nthreads=2, mem_gb=1.0)
    >>> node.inputs.dof, node.n_procs
    (6, 2)
    """
    from nipype.pipeline import engine as pe

    settings = compute_settings(device, omp_nthreads)
    return pe.Node(interface(dof=dof, metric=metric, random_seed=seed, **inputs,
                             **settings["inputs"]),
                   name=name, n_procs=settings["n_procs"], mem_gb=mem_gb)
