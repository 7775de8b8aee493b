# SPDX-License-Identifier: Apache-2.0
"""Reportlets of a series realignment: motion over time, and a before/after view.

- :func:`motion_plot_svg` / :class:`MotionReport`: translations, rotations (in degrees) and
  framewise displacement over the volumes, from a confounds TSV, with the volumes above an FD
  threshold marked.
- :func:`realignment_svg` / :class:`RealignmentReport`: the temporal standard deviation of the
  series before and after realignment (motion shows as bright rims at edges), flickering from
  one to the other on hover like the registration reportlets.
"""

from __future__ import annotations

import io
import logging
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    isdefined,
    traits,
)

from .common import derived_name, load_image, node_errors
from .reports import (
    ReportletOutputSpec,
    cut_positions,
    figure_svg,
    intensity_window,
    render_layer,
    svg_document,
)

LOGGER = logging.getLogger("niaffine.interfaces.series_reports")


def read_confounds(path) -> dict[str, np.ndarray]:
    """Columns of a confounds TSV (``n/a`` as NaN).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.tsv"
    >>> _ = p.write_text("a\\tb\\n1\\tn/a\\n2\\t3\\n")
    >>> {k: v.tolist() for k, v in read_confounds(p).items()}
    {'a': [1.0, 2.0], 'b': [nan, 3.0]}
    """
    lines = [line.split("\t") for line in open(path, encoding="utf-8").read().splitlines() if line]
    header, rows = lines[0], lines[1:]
    return {name: np.array([float("nan") if row[k] == "n/a" else float(row[k]) for row in rows])
            for k, name in enumerate(header)}


def motion_plot_svg(confounds, out_file: str, *, title: str = "head motion",
                    fd_threshold: float = 0.5, tr: float | None = None) -> str:
    """Plot the motion parameters and framewise displacement over time as an SVG.

    Parameters
    ----------
    confounds : str or dict
        A confounds TSV, or its columns (``trans_*``, ``rot_*``, ``framewise_displacement``).
    out_file : str
    title : str
    fd_threshold : float
        Volumes with a larger FD are marked (fMRIPrep flags 0.5 mm).
    tr : float, optional
        Repetition time: the axis is then in seconds.

    Returns
    -------
    out_file : str
    """
    from matplotlib.figure import Figure

    columns = read_confounds(confounds) if isinstance(confounds, (str, os.PathLike)) else confounds
    n = len(columns["trans_x"])
    x = np.arange(n) * (tr or 1.0)
    fig = Figure(figsize=(9, 5.4), dpi=100)
    axes = fig.subplots(3, 1, sharex=True)
    for axis in "xyz":
        axes[0].plot(x, columns[f"trans_{axis}"], label=axis, lw=1)
        axes[1].plot(x, np.degrees(columns[f"rot_{axis}"]), label=axis, lw=1)
    axes[0].set_ylabel("translation (mm)")
    axes[1].set_ylabel("rotation (deg)")
    fd = columns.get("framewise_displacement", np.full(n, np.nan))
    axes[2].plot(x, fd, color="k", lw=1)
    axes[2].axhline(fd_threshold, color="tab:red", lw=0.8, ls="--")
    high = np.flatnonzero(np.nan_to_num(fd) > fd_threshold)
    axes[2].plot(x[high], fd[high], "o", color="tab:red", ms=3)
    axes[2].set_ylabel("FD (mm)")
    axes[2].set_xlabel("time (s)" if tr else "volume")
    for ax in axes[:2]:
        ax.legend(loc="upper right", fontsize=7, ncol=3, frameon=False)
    mean_fd = float(np.nanmean(fd)) if np.isfinite(fd).any() else 0.0
    fig.suptitle(f"{title}: mean FD {mean_fd:.3f} mm, {len(high)} volume(s) above "
                 f"{fd_threshold:g} mm", fontsize=9)
    text = figure_svg(fig)
    with open(out_file, "w", encoding="utf-8") as stream:
        stream.write(text)
    return out_file


def temporal_sd(img) -> np.ndarray:
    """Voxel-wise temporal standard deviation of a 4D image (canonical orientation)."""
    img = nib.as_closest_canonical(img)
    return np.asanyarray(img.dataobj).astype(np.float32).std(axis=3)


def realignment_svg(before: str, after: str, out_file: str, *, mask: str | None = None,
                    n_cuts: int = 5, title: str = "before / after realignment") -> str:
    """A before/after reportlet: temporal SD of the raw series, flickering to the realigned.

    ``before`` and ``after`` must share a grid (e.g. a series and its realignment onto a
    reference volume of the series).
    """
    raw = load_image(before, role="series", ndim=(4,))
    moved = load_image(after, role="realigned series", ndim=(4,))
    if raw.shape != moved.shape or not np.allclose(raw.affine, moved.affine, atol=1e-3):
        raise ValueError(f"{after}: not on the grid of {before}")
    sd_before, sd_after = temporal_sd(raw), temporal_sd(moved)
    canonical = nib.as_closest_canonical(raw)
    zooms = np.asarray(canonical.header.get_zooms()[:3], dtype=float)
    support = None
    if mask:
        support = np.asanyarray(nib.as_closest_canonical(nib.load(mask)).dataobj) > 0
    if support is None or not support.any():
        support = sd_before > np.percentile(sd_before, 50)
    cuts = cut_positions(support, n_cuts)
    window = intensity_window(np.maximum(sd_before, sd_after), support)
    layers = [render_layer(sd, window, None, [], None, cuts, zooms, f"{title}: {label}")
              for sd, label in ((sd_before, "temporal SD before"),
                                (sd_after, "after (hover)"))]
    import matplotlib.image as mpimg

    height, width = mpimg.imread(io.BytesIO(layers[0]), format="png").shape[:2]
    with open(out_file, "w", encoding="utf-8") as stream:
        stream.write(svg_document(layers, width, height, title))
    return out_file


class _MotionReportInputSpec(BaseInterfaceInputSpec):
    confounds_file = File(exists=True, mandatory=True, desc="confounds TSV")
    title = traits.Str("head motion", usedefault=True, desc="title of the plot")
    fd_threshold = traits.Float(0.5, usedefault=True, desc="FD (mm) above which volumes are marked")
    repetition_time = traits.Float(desc="TR (s): time axis in seconds")


class MotionReport(SimpleInterface):
    """SVG plot of the motion parameters and framewise displacement over time.

    Examples
    --------
    >>> MotionReport().inputs.fd_threshold
    0.5
    """

    input_spec = _MotionReportInputSpec
    output_spec = ReportletOutputSpec

    def _run_interface(self, runtime):
        out = derived_name(self.inputs.confounds_file, "_motion", ".svg", runtime.cwd)
        tr = self.inputs.repetition_time if isdefined(self.inputs.repetition_time) else None
        with node_errors("MotionReport", confounds_file=self.inputs.confounds_file):
            self._results["out_report"] = motion_plot_svg(
                self.inputs.confounds_file, out, title=self.inputs.title,
                fd_threshold=self.inputs.fd_threshold, tr=tr)
        return runtime


class _RealignmentReportInputSpec(BaseInterfaceInputSpec):
    before = File(exists=True, mandatory=True, desc="the raw series")
    after = File(exists=True, mandatory=True, desc="the realigned series, on the same grid")
    mask_file = File(exists=True, desc="mask that sets the slices shown")
    title = traits.Str("before / after realignment", usedefault=True)


class RealignmentReport(SimpleInterface):
    """Before/after view: temporal standard deviation of the raw and realigned series.

    Examples
    --------
    >>> RealignmentReport().inputs.title
    'before / after realignment'
    """

    input_spec = _RealignmentReportInputSpec
    output_spec = ReportletOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        mask = inputs.mask_file if isdefined(inputs.mask_file) else None
        out = derived_name(inputs.before, "_realignment", ".svg", runtime.cwd)
        with node_errors("RealignmentReport", before=inputs.before, after=inputs.after):
            self._results["out_report"] = realignment_svg(inputs.before, inputs.after, out,
                                                          mask=mask, title=inputs.title)
        return runtime
