# SPDX-License-Identifier: Apache-2.0
"""SVG reportlets: the fixed image with the moved image's edges and the brain-mask contour.

Like the registration reportlets of fMRIPrep reports, the picture shows the fixed
image in three orientations with the edges of the moved image drawn over it; when
the mouse is over the picture it flickers to the moved image, whose edges stay in
place, so any misalignment shows as edges that move relative to the anatomy.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from xml.sax.saxutils import escape

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from .common import derived_name, load_image, node_errors, split_nifti_name

LOGGER = logging.getLogger("niaffine.interfaces.reports")

_AXES = ("sagittal", "coronal", "axial")
_EDGE_COLOUR = "#33e0ff"
_MASK_COLOUR = "#ff3030"


def figure_svg(fig) -> str:
    """A matplotlib figure as SVG text that is the same on every run.

    Matplotlib stamps its SVGs with the date and random element ids; with the date left out
    and a fixed hash salt, the same figure gives the same bytes, so reruns and runs on
    other machines (SLURM) write identical reportlets.
    """
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "niaffine"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of a sample of intensities.

    Examples
    --------
    >>> v = np.r_[np.full(100, 1.0), np.full(100, 5.0)]
    >>> 1.0 <= otsu_threshold(v) < 5.0
    True
    """
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    total = (hist * centres).sum()
    mean1 = (total - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def cut_positions(support: np.ndarray, n_cuts: int) -> list[np.ndarray]:
    """Evenly spaced slice indices through the bounding box of ``support`` along each axis.

    Examples
    --------
    >>> s = np.zeros((10, 10, 10), bool); s[2:8, :, :] = True
    >>> cut_positions(s, 3)[0].tolist()
    [3, 4, 6]
    """
    cuts = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        filled = np.flatnonzero(support.any(axis=other))
        lo, hi = (filled[0], filled[-1]) if filled.size else (0, support.shape[axis] - 1)
        positions = np.linspace(lo, hi, n_cuts + 2)[1:-1]
        cuts.append(np.round(positions).astype(int))
    return cuts


def _on_grid(img: nb.Nifti1Image, reference: nb.Nifti1Image, order: int) -> np.ndarray:
    """Data of ``img`` on the (canonical) grid of ``reference`` (display only)."""
    img = nb.as_closest_canonical(img)
    if img.ndim == 4:
        img = img.slicer[..., 0]
    same_grid = np.allclose(img.affine, reference.affine, atol=1e-3)
    if img.shape[:3] == reference.shape[:3] and same_grid:
        return img.get_fdata(dtype=np.float32)
    from nibabel.processing import resample_from_to

    return resample_from_to(img, (reference.shape[:3], reference.affine), order=order).get_fdata(
        dtype=np.float32
    )


def intensity_window(data: np.ndarray, support: np.ndarray) -> tuple[float, float]:
    values = data[support] if support.any() else data.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(min(lo, 0.0)), float(hi if hi > lo else lo + 1.0)


def render_layer(background, window, edges, edge_levels, mask, cuts, zooms, title) -> bytes:
    from matplotlib.figure import Figure

    n_cuts = len(cuts[0])
    fig = Figure(figsize=(1.7 * n_cuts, 5.4), dpi=100, facecolor="black")
    for row, axis in enumerate(range(3)):
        # Display plane: the two remaining axes, second one vertical (RAS: up is S or A).
        for col, index in enumerate(cuts[axis]):
            ax = fig.add_subplot(3, n_cuts, row * n_cuts + col + 1)
            ax.set_axis_off()
            take = [slice(None)] * 3
            take[axis] = int(index)
            plane = tuple(a for a in range(3) if a != axis)
            aspect = zooms[plane[1]] / zooms[plane[0]]
            ax.imshow(
                background[tuple(take)].T, cmap="gray", origin="lower", vmin=window[0],
                vmax=window[1], aspect=aspect, interpolation="nearest",
            )
            if edges is not None and edge_levels:
                ax.contour(
                    edges[tuple(take)].T, levels=edge_levels, colors=_EDGE_COLOUR,
                    linewidths=0.5,
                )
            if mask is not None and mask[tuple(take)].any():
                ax.contour(
                    mask[tuple(take)].T.astype(float), levels=[0.5], colors=_MASK_COLOUR,
                    linewidths=0.8,
                )
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.94, wspace=0.02, hspace=0.02)
    if title:
        fig.suptitle(title, color="white", fontsize=9, y=0.99)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="black")
    return buffer.getvalue()


def svg_document(layers: list[bytes], width: int, height: int, title: str) -> str:
    """An SVG holding PNG layers; the second one flickers in on hover."""
    style = (
        "@keyframes niaffine-flicker { 0% { opacity: 0; } 100% { opacity: 1; } }\n"
        ".niaffine-moved { opacity: 0; animation: 1s ease-in-out 0s alternate none "
        "infinite paused niaffine-flicker; }\n"
        "svg:hover .niaffine-moved { opacity: 1; animation-play-state: running; }\n"
    )
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'preserveAspectRatio="xMidYMid meet" class="niaffine-reportlet">',
        f"<title>{escape(title)}</title>",
        f"<style>{style}</style>",
    ]
    for number, png in enumerate(layers):
        href = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        css = "niaffine-fixed" if number == 0 else "niaffine-moved"
        parts.append(
            f'<g class="{css}"><image x="0" y="0" width="{width}" height="{height}" '
            f'href="{href}" xlink:href="{href}"/></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def registration_svg(
    fixed_image: str,
    *,
    out_file: str,
    moving_image: str | None = None,
    mask_file: str | None = None,
    n_cuts: int = 7,
    title: str | None = None,
) -> str:
    """Write an SVG reportlet of a registration (or of a brain mask).

    Parameters
    ----------
    fixed_image : str
        Background image.
    out_file : str
        Output ``.svg`` path.
    moving_image : str, optional
        The moved image (resampled into the fixed space); its edges are drawn
        and it flickers in on hover. Any grid: it is resampled for display.
    mask_file : str, optional
        Brain mask whose contour is drawn in red.
    n_cuts : int
        Slices per orientation.
    title : str, optional
        Shown on top of the picture and as the SVG ``<title>``.

    Returns
    -------
    out_file : str
    """
    fixed = nb.as_closest_canonical(load_image(fixed_image, role="fixed image", ndim=(3, 4)))
    if fixed.ndim == 4:
        fixed = fixed.slicer[..., 0]
    background = fixed.get_fdata(dtype=np.float32)
    zooms = np.asarray(fixed.header.get_zooms()[:3], dtype=float)
    mask = None
    if mask_file:
        mask = _on_grid(load_image(mask_file, role="mask", ndim=(3, 4)), fixed, order=0) > 0.5
    moved = None
    if moving_image:
        moved = _on_grid(load_image(moving_image, role="moving image", ndim=(3, 4)), fixed, order=1)
    edges = moved
    if moved is not None and mask is not None and mask.any():
        # edges near the brain only (scalp rings of a head image would clutter the view)
        from scipy import ndimage

        near = ndimage.binary_dilation(mask, iterations=max(1, int(round(6 / zooms.min()))))
        edges = np.ma.masked_array(moved, mask=~near)

    support = mask if mask is not None and mask.any() else np.abs(background) > 0
    cuts = cut_positions(support, n_cuts)
    levels = []
    if moved is not None:
        inside = (mask if mask is not None else np.abs(moved) > 0) & (np.abs(moved) > 0)
        values = moved[inside] if inside.any() else moved.ravel()
        low = float(np.percentile(values, 2))
        levels = sorted({low, otsu_threshold(values)})
    title = title or ("registration" if moved is not None else "brain mask")
    layers = [
        render_layer(
            background, intensity_window(background, support), edges, levels, mask, cuts, zooms, title
        )
    ]
    if moved is not None:
        layers.append(
            render_layer(moved, intensity_window(moved, support), edges, levels, mask, cuts, zooms, title)
        )
    import matplotlib.image as mpimg

    height, width = mpimg.imread(io.BytesIO(layers[0]), format="png").shape[:2]
    with open(out_file, "w", encoding="utf-8") as stream:
        stream.write(svg_document(layers, width, height, title))
    LOGGER.info("reportlet %s", out_file)
    return out_file


def default_report_name(fixed_image, moving_image=None, mask_file=None, newpath=None) -> str:
    """Reportlet name after the moved image (``_warped`` dropped), else the mask, else the fixed.

    Examples
    --------
    >>> default_report_name("/w/T1w_brain.nii.gz", "/w/sub-01_T2w_warped.nii.gz", newpath="/o")
    '/o/sub-01_T2w_report.svg'
    >>> default_report_name("/w/T1w.nii.gz", None, "/w/T1w_mask.nii.gz", newpath="/o")
    '/o/T1w_mask_report.svg'
    """
    source = moving_image or mask_file or fixed_image
    stem, _ = split_nifti_name(source)
    if moving_image and stem.endswith("_warped"):
        stem = stem[: -len("_warped")]
    return derived_name(stem + ".nii.gz", "_report", ".svg", newpath=newpath)


class _RegistrationReportInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True, desc="background (fixed or reference) image")
    moving_image = File(exists=True, desc="moved image, resampled into the fixed space")
    mask_file = File(exists=True, desc="brain mask whose contour is drawn")
    n_cuts = traits.Range(low=1, high=20, value=7, usedefault=True, desc="slices per orientation")
    title = traits.Str(desc="title shown above the picture")
    out_report = traits.Str(desc="output file name (default: <fixed stem>_report.svg)")


class ReportletOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="SVG reportlet")


class RegistrationReport(SimpleInterface):
    """An SVG reportlet: fixed image, moved image's edges and brain-mask contour.

    Examples
    --------
    >>> RegistrationReport(n_cuts=5).inputs.n_cuts
    5
    """

    input_spec = _RegistrationReportInputSpec
    output_spec = ReportletOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        moving = inputs.moving_image if isdefined(inputs.moving_image) else None
        mask = inputs.mask_file if isdefined(inputs.mask_file) else None
        if isdefined(inputs.out_report):
            out_report = os.path.join(runtime.cwd, inputs.out_report)
        else:
            out_report = default_report_name(inputs.fixed_image, moving, mask, runtime.cwd)
        with node_errors(
            "RegistrationReport", fixed_image=inputs.fixed_image, moving_image=moving,
            mask_file=mask,
        ):
            self._results["out_report"] = registration_svg(
                inputs.fixed_image,
                out_file=out_report,
                moving_image=moving,
                mask_file=mask,
                n_cuts=inputs.n_cuts,
                title=inputs.title if isdefined(inputs.title) else None,
            )
        return runtime
