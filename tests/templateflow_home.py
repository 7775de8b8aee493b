# SPDX-License-Identifier: Apache-2.0
"""A fake local TemplateFlow home for tests: small generated images, no download."""

from __future__ import annotations

import json
import socket

import nibabel as nb
import numpy as np

TPL = "MNI152NLin6Asym"


def grid_image(shape, zoom, value=None) -> nb.Nifti1Image:
    """A small template-like image: a bright ellipsoid (or a mask) on a RAS grid."""
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) * zoom / 2
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nb.affines.apply_affine(affine, ijk)
    inside = (((xyz / [30.0, 36.0, 28.0]) ** 2).sum(1) <= 1).reshape(shape)
    data = inside.astype(np.uint8) if value is None else inside * np.float32(value)
    img = nb.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    return img


def make_templateflow_home(root, name=TPL, resolutions=((2, 2.0),)):
    """A TemplateFlow home with one template: T1w and brain mask per (index, mm)."""
    folder = root / f"tpl-{name}"
    folder.mkdir(parents=True)
    (folder / "template_description.json").write_text(json.dumps(
        {"Identifier": name, "Name": "test template", "TemplateFlowVersion": "1.0.0"}))
    for index, zoom in resolutions:
        shape = tuple(int(round(n / zoom)) + 1 for n in (80.0, 96.0, 76.0))
        stem = folder / f"tpl-{name}_res-{index:02d}"
        grid_image(shape, zoom, 100.0).to_filename(f"{stem}_T1w.nii.gz")
        grid_image(shape, zoom).to_filename(f"{stem}_desc-brain_mask.nii.gz")
    return root


def block_network(monkeypatch) -> None:
    """Make any connection attempt fail the test (TemplateFlow must never download)."""
    def refuse(*args, **kwargs):
        raise AssertionError("niaffine tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def make_mni_like_home(root, name=TPL, crop=3):
    """A TemplateFlow home whose ``name`` has only res-2: the built-in MNI152NLin2009aSym's
    2 mm brain and mask, ``crop`` voxels cut off every side (a grid of its own, a real
    brain to register to). Returns ``(root, path of the res-2 T1w)``."""
    import tempfile

    from niaffine.interfaces.templates import template_files

    folder = root / f"tpl-{name}"
    folder.mkdir(parents=True)
    (folder / "template_description.json").write_text(json.dumps(
        {"Identifier": name, "Name": "test template", "TemplateFlowVersion": "1.0.0"}))
    out = {}
    with tempfile.TemporaryDirectory() as scratch:
        t1w, _, mask = template_files("MNI152NLin2009aSym:res-2", newpath=scratch)
        for src, suffix in ((t1w, "T1w"), (mask, "desc-brain_mask")):
            cut = nb.load(src).slicer[crop:-crop, crop:-crop, crop:-crop]
            cut = nb.Nifti1Image(np.asanyarray(cut.dataobj), cut.affine, cut.header)
            cut.header.set_xyzt_units("mm")
            out[suffix] = folder / f"tpl-{name}_res-02_{suffix}.nii.gz"
            cut.to_filename(out[suffix])
    return root, out["T1w"]
