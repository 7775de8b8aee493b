# SPDX-License-Identifier: Apache-2.0
"""RegistrationReport writes valid SVG with the fixed and moved layers."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET

import numpy as np

from niaffine.interfaces.reports import RegistrationReport

SVG = "{http://www.w3.org/2000/svg}"


def _layers(path):
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    images = list(root.iter(f"{SVG}image"))
    return root, images


def _png(image_element) -> np.ndarray:
    import matplotlib.image as mpimg

    href = image_element.get("href")
    assert href.startswith("data:image/png;base64,")
    return mpimg.imread(io.BytesIO(base64.b64decode(href.split(",", 1)[1])), format="png")


def test_registration_reportlet(mni_files, tmp_path):
    result = RegistrationReport(
        fixed_image=mni_files["t1"], moving_image=mni_files["t2"], mask_file=mni_files["mask"],
        title="T2w to T1w", n_cuts=5,
    ).run(cwd=str(tmp_path))
    root, images = _layers(result.outputs.out_report)
    assert len(images) == 2
    assert root.find(f"{SVG}title").text == "T2w to T1w"
    assert "svg:hover" in root.find(f"{SVG}style").text
    fixed, moved = _png(images[0]), _png(images[1])
    assert fixed.shape == moved.shape and fixed.shape[0] > 200
    # edges (cyan) and the mask contour (red) are drawn on the fixed layer
    rgb = fixed[..., :3]
    cyan = (rgb[..., 0] < 0.4) & (rgb[..., 1] > 0.7) & (rgb[..., 2] > 0.8)
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.4) & (rgb[..., 2] < 0.4)
    assert cyan.sum() > 500 and red.sum() > 100
    assert not np.allclose(fixed, moved)


def test_mask_reportlet_on_other_grid(mni_files, tmp_path):
    """A mask on another grid (1 mm vs 2 mm) is resampled for display."""
    result = RegistrationReport(
        fixed_image=mni_files["t1"], mask_file=mni_files["mask_1mm"], out_report="mask.svg"
    ).run(cwd=str(tmp_path))
    assert result.outputs.out_report == str(tmp_path / "mask.svg")
    _, images = _layers(result.outputs.out_report)
    assert len(images) == 1
