# SPDX-License-Identifier: Apache-2.0
"""Derivatives of a realigned BOLD or DWI series, with fMRIPrep 23's names.

::

    <p>_desc-hmc_boldref.nii.gz                        the realignment's reference
    <p>_from-orig_to-boldref_mode-image_desc-hmc_xfm.txt   one affine per volume
    <p>_desc-coreg_boldref.nii.gz                      the reference registered to the T1w
    <p>_from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt
    <p>_desc-confounds_timeseries.tsv (+ .json)
    <p>_space-<space>[_res-N]_desc-preproc_bold.nii.gz (+ _boldref, _desc-brain_mask) per space
    <p>_desc-preproc_bold.nii.gz (+ _desc-brain_mask)  with ``func``: on the boldref's grid

(``dwiref``/``dwi`` for DWI, whose series is written in T1w space with its rotated
``.bvec`` and its ``.bval``.) A template space's ``res-N`` is in the names when the space
has one (the series lie on that grid, as in fMRIPrep); without one, or with
``res-native``, series keep their own voxel size and the names have no ``res``.
"""

from __future__ import annotations

from pathlib import Path

from niaffine.bidsapp.names import build_name, space_label

#: Raw-sidecar keys copied into the preprocessed series' sidecar.
KEPT_METADATA = {"bold": ("RepetitionTime", "TaskName", "SliceTiming"),
                 "dwi": ("PhaseEncodingDirection", "TotalReadoutTime", "RepetitionTime")}
_T1W_ROLES = ("series_t1w", "reference_t1w", "mask_t1w")
_TEMPLATE_ROLES = ("series_template", "reference_template", "mask_template")


def sink_series(w, folder: Path, ents: dict, image: dict, item: dict, *, t1w, t1w_uri,
                spaces=()) -> None:
    """Write one realigned series' derivatives (see the module's docstring).

    Parameters
    ----------
    w : niaffine.bidsapp.sink.Writer
    folder : Path
        ``func`` or ``dwi`` folder of the subject/session.
    ents : dict
        The raw image's entities.
    image : dict
        The ``subject_data`` entry (``path``, ``suffix``, ``bvals``, ``metadata``).
    item : dict
        The workflow's outputs for this image, by role.
    t1w, t1w_uri : str
        The raw T1w and the URI of its derivative (``SpatialReference``).
    spaces : list of dict
        The series in each template space: ``entities``, ``spatial_reference`` and the
        roles ``series_template``, ``reference_template``, ``mask_template``
        (:func:`niaffine.bidsapp.sink.image_spaces`).
    """
    from niaffine.bidsapp.sink import load_facts

    kind = image["suffix"]
    ref = f"{kind}ref"
    raw = [image["path"]]
    metadata = image.get("metadata") or {}
    tr = metadata.get("RepetitionTime") if kind == "bold" else None
    hmc_facts = load_facts(item.get("hmc_run_facts")) or {}
    motion = {"MeanFramewiseDisplacement": hmc_facts.get("mean_fd_mm"),
              "MaxFramewiseDisplacement": hmc_facts.get("max_fd_mm"),
              "FailedVolumes": sorted(int(k) for k in hmc_facts.get("failed") or {}) or None,
              "ElapsedSeconds": hmc_facts.get("elapsed_s"), "Device": hmc_facts.get("device"),
              "VolumesPerCall": hmc_facts.get("volumes_per_call")}
    w.put(item.get("reference"), folder, ents | {"desc": "hmc"}, ref, ".nii.gz",
          w.sidecar(raw, Description=f"Reference of the {kind} series' head-motion "
                                     "correction (the volumes are realigned to it)"))
    w.put(item.get("hmc_xfm"), folder,
          ents | {"from": "orig", "to": ref, "mode": "image", "desc": "hmc"}, "xfm", ".txt",
          w.sidecar(raw, Description="Head-motion correction: one affine per volume (ITK), "
                                     f"mapping {ref} points to the volume's points", **motion))
    coreg = load_facts(item.get("coreg_run_facts"))
    w.put(item.get("reference"), folder, ents | {"desc": "coreg"}, ref, ".nii.gz",
          w.sidecar(raw, Description=f"The {ref} registered to the T1w (no distortion "
                                     "correction: the head-motion reference itself)"))
    w.put(item.get("coreg_xfm"), folder,
          ents | {"from": ref, "to": "T1w", "mode": "image", "desc": "coreg"}, "xfm", ".txt",
          w.sidecar(raw + [t1w], coreg, Description=f"Affine transform, {ref} to T1w"))
    confounds = w.put(item.get("confounds_file"), folder, ents | {"desc": "confounds"},
                      "timeseries", ".tsv")
    if confounds:
        w.put(item.get("confounds_metadata"), folder, ents | {"desc": "confounds"},
              "timeseries", ".json")
    kept = {key: metadata[key] for key in KEPT_METADATA[kind] if key in metadata}
    written = [({"space": "T1w"}, t1w_uri, [item.get(role) for role in _T1W_ROLES])]
    written += [(space["entities"], space.get("spatial_reference"),
                 [space.get(role) for role in _TEMPLATE_ROLES]) for space in spaces]
    for entities, spatial, (series, reference, mask) in written:
        in_space = ents | entities
        label = space_label(entities)
        preproc = w.put(series, folder, in_space | {"desc": "preproc"}, kind, ".nii.gz",
                        w.sidecar(raw, coreg, SkullStripped=False, SpatialReference=spatial,
                                  Description=f"The {kind} series realigned and resampled "
                                              f"into {label} space (one interpolation per "
                                              "volume)", **kept),
                        repetition_time=tr)
        w.put(reference, folder, in_space, ref, ".nii.gz",
              w.sidecar(raw, coreg, SpatialReference=spatial,
                        Description=f"The {ref} in {label} space"))
        w.put(mask, folder, in_space | {"desc": "brain"}, "mask", ".nii.gz",
              w.sidecar(raw, Type="Brain", SpatialReference=spatial,
                        Description=f"Mask of the {ref} in {label} space"))
        if kind == "dwi" and preproc:
            w.put(item.get("bvec_t1w"), folder, in_space | {"desc": "preproc"}, kind, ".bvec")
            w.put(image.get("bvals"), folder, in_space | {"desc": "preproc"}, kind, ".bval")
    if kind == "bold" and item.get("series_func"):  # fMRIPrep's func space: no space entity
        spatial = w.uri(folder / build_name(ents | {"desc": "hmc"}, ref, ".nii.gz"))
        w.put(item.get("series_func"), folder, ents | {"desc": "preproc"}, kind, ".nii.gz",
              w.sidecar(raw, SkullStripped=False, SpatialReference=spatial,
                        Description=f"The {kind} series realigned on its {ref}'s grid (one "
                                    "interpolation per volume)", **kept),
              repetition_time=tr)
        w.put(item.get("reference_mask"), folder, ents | {"desc": "brain"}, "mask", ".nii.gz",
              w.sidecar(raw, Type="Brain", SpatialReference=spatial,
                        Description=f"Mask of the {ref} on its own grid"))
