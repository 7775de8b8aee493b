# SPDX-License-Identifier: Apache-2.0
"""Sink one subject's (and session's) workflow outputs into BIDS-Derivatives.

:func:`sink_subject` is a plain function (tested on its own); :class:`SubjectSink`
is the thin Nipype interface the dataset-wide graph uses. The sink always runs, so
a rerun with a cached work directory rewrites every derivative.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from niaffine import __version__
from niaffine.bidsapp import derivatives as drv

LOGGER = logging.getLogger("niaffine.bidsapp")

#: ``outputnode`` fields of ``init_single_subject_wf`` that the sink consumes.
OUTPUT_FIELDS = (
    "t1w_preproc", "t1w_mask", "t1w_brain", "t1w2template_xfm", "template2t1w_xfm",
    "t1w_template", "coreg_xfms", "t1w2image_xfms", "images_t1w", "images_template",
    "reportlets", "metrics",
)
_METRIC_KEYS = {"metric": "Metric", "final_metric": "FinalMetric", "dof": "DOF",
                "iterations": "Iterations", "elapsed_s": "ElapsedSeconds",
                "mask_volume_ml": "MaskVolumeML", "batch_size": "BatchSize"}


def _as_list(value) -> list:
    if value is None or (not isinstance(value, str | Path) and not isdefined(value)):
        return []
    if isinstance(value, list | tuple):
        return [v for v in value if v is not None and (isinstance(v, str | Path) or isdefined(v))]
    return [value]


def _first(value):
    items = _as_list(value)
    return items[0] if items else None


def _load_metrics(files) -> list[dict]:
    out = []
    for path in _as_list(files):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            LOGGER.warning("unreadable metrics file %s: %s", path, exc)
            continue
        data["_file"] = str(path)
        out.append(data)
    return out


def _match_metrics(metrics: list[dict], t1w: str, images: list[dict], normalised: bool):
    """Assign metrics records to the template registration and to each image.

    ``init_single_subject_wf`` lists them in a documented order (normalisation first,
    then one per image); when the count does not fit that order, a record is matched
    by its ``source`` file name instead.
    """
    if len(metrics) == int(normalised) + len(images):
        template = metrics[0] if normalised else None
        return template, list(metrics[int(normalised):])
    by_image: list[dict | None] = [None] * len(images)
    template = None
    names = [Path(img["path"]).name for img in images]
    for record in metrics:
        source = Path(str(record.get("source", ""))).name
        if source in names and by_image[names.index(source)] is None:
            by_image[names.index(source)] = record
        elif template is None and normalised and "T1w" in source:
            template = record
    return template, by_image


def _sidecar(sources, metrics: dict | None = None, **extra) -> dict:
    data = {"Sources": sources, "GeneratedBy": [{"Name": "niaffine", "Version": __version__}]}
    if metrics:
        data.update({_METRIC_KEYS[k]: metrics[k] for k in _METRIC_KEYS if k in metrics})
        if "target" in metrics:
            data["RegistrationTarget"] = Path(str(metrics["target"])).name
    data.update(extra)
    return data


def _put(tree: drv.OutputTree, written: list, src, dst: Path, sidecar: dict | None = None):
    if not src:
        return
    tree.copy_file(src, dst)
    written.append(str(dst))
    if sidecar is not None:
        name = dst.name.replace(".nii.gz", ".json").replace(".nii", ".json")
        name = name[:-4] + ".json" if name.endswith(".txt") else name
        written.append(str(tree.write_json(dst.with_name(name), sidecar)))


def _implausible(xfm, fixed, moving) -> str | None:
    """One line when the transform file ``xfm`` (fixed -> moving) is implausible, else None."""
    import nibabel as nb

    from niaffine.bidsapp.plausibility import transform_problem
    from niaffine.errors import InputError
    from niaffine.io import load_transform

    if not xfm or not fixed or not moving:
        return None
    try:
        matrix = load_transform(xfm)
        problem = transform_problem(matrix, nb.load(str(fixed)), nb.load(str(moving)))
    except (InputError, OSError, ValueError) as exc:
        problem = f"cannot be checked ({exc})"
    if problem is None:
        return None
    return (f"implausible registration of {Path(str(moving)).name} to "
            f"{Path(str(fixed)).name}: {problem}")


def _drop_implausible(outputs, fields, t1w, images, template_space):
    """Check every registration; clear the outputs of the implausible ones in ``fields``.

    Returns the problems (one line each) and the template space, ``None`` when the
    T1w-to-template registration is implausible (no template-space file is then written).
    """
    problems = []
    normalised = template_space
    if template_space:
        problem = _implausible(_first(outputs.get("t1w2template_xfm")),
                               _first(outputs.get("t1w_template")), t1w)
        if problem:
            problems.append(problem)
            normalised = None
    for i, image in enumerate(images):
        xfms = fields["coreg_xfms"]
        problem = _implausible(xfms[i] if i < len(xfms) else None, t1w, image["path"])
        if problem:
            problems.append(problem)
            for items in fields.values():
                if i < len(items):
                    items[i] = None
    return problems, normalised


def _image_suffix(path, src_suffix: str) -> str:
    """``boldref``/``dwiref`` for a 3D reference of a 4D series, else the source suffix."""
    if src_suffix in ("bold", "dwi"):
        import nibabel as nb

        shape = nb.load(str(path)).shape
        if len(shape) < 4 or shape[3] == 1:
            return f"{src_suffix}ref"
    return src_suffix


def _figure_names(prefix, images, template_space, count) -> list[str]:
    """Names of the reportlets, in ``init_single_subject_wf``'s order: brain mask,
    normalisation (with a template), then one coregistration per image."""
    names = [drv.build_name(prefix + [("desc", "brain")], "mask", ".svg")]
    if template_space:
        names.append(drv.build_name(prefix + [("space", template_space)], "T1w", ".svg"))
    for image in images:
        ents = drv.image_entities(image["path"], *[v for _, v in prefix[:1]],
                                  prefix[1][1] if len(prefix) > 1 else None)
        names.append(drv.build_name(ents + [("desc", "coreg")], image["suffix"], ".svg"))
    if len(names) != count:  # an unexpected layout: keep every figure, numbered
        names = [drv.build_name(prefix + [("desc", f"figure{i + 1}")], "report", ".svg")
                 for i in range(count)]
    return names


def sink_subject(output_dir, bids_dir, subject_data: dict, outputs: dict,
                 template_space: str | None = None) -> list[str]:
    """Write one subject/session's outputs as BIDS-Derivatives.

    Parameters
    ----------
    output_dir, bids_dir : path-like
        Derivatives root and raw dataset root (for ``Sources``).
    subject_data : dict
        As given to ``init_single_subject_wf``.
    outputs : dict
        ``outputnode`` fields (see :data:`OUTPUT_FIELDS`); missing ones are skipped.
    template_space : str or None
        Label of the template space (``None``: T1w only).

    Returns
    -------
    written : list of str
        Every file written (derivatives, sidecars, figures).

    Raises
    ------
    ImplausibleRegistrationError
        After writing everything else, when a registration's transform is outside the
        bounds of :mod:`niaffine.bidsapp.plausibility` (its files are not written).
    UnsafeOutputError
        When a destination resolves into ``bids_dir``.
    """
    from niaffine.bidsapp.plausibility import ImplausibleRegistrationError

    tree = drv.OutputTree(Path(output_dir), Path(bids_dir))
    sub, ses = subject_data["subject"], subject_data.get("session")
    t1w, images = subject_data["t1w"], list(subject_data.get("images", []))
    prefix = drv.subject_prefix(sub, ses)
    anat = drv.subject_dir(output_dir, sub, ses, "anat")
    t1w_src = [drv.bids_uri(t1w, bids_dir)]
    metrics_tpl, metrics_img = _match_metrics(_load_metrics(outputs.get("metrics")), t1w, images,
                                              bool(template_space))
    written: list[str] = []

    def anat_name(entities, suffix, ext=".nii.gz"):
        return anat / drv.build_name(prefix + entities, suffix, ext)

    t1w_ref = anat_name([("desc", "preproc")], "T1w")
    _put(tree, written, _first(outputs.get("t1w_preproc")), t1w_ref,
         _sidecar(t1w_src, SkullStripped=False))
    t1w_ref_uri = "bids::" + t1w_ref.relative_to(output_dir).as_posix()
    _put(tree, written, _first(outputs.get("t1w_mask")),
         anat_name([("desc", "brain")], "mask"), _sidecar(t1w_src, Type="Brain"))
    _put(tree, written, _first(outputs.get("t1w_brain")),
         anat_name([("desc", "brain")], "T1w"), _sidecar(t1w_src, SkullStripped=True))
    fields = {k: _as_list(outputs.get(k)) for k in
              ("coreg_xfms", "t1w2image_xfms", "images_t1w", "images_template")}
    problems, normalised = _drop_implausible(outputs, fields, t1w, images, template_space)
    if normalised:
        fwd = [("from", "T1w"), ("to", template_space), ("mode", "image")]
        inv = [("from", template_space), ("to", "T1w"), ("mode", "image")]
        _put(tree, written, _first(outputs.get("t1w2template_xfm")),
             anat_name(fwd, "xfm", ".txt"), _sidecar(t1w_src, metrics_tpl))
        _put(tree, written, _first(outputs.get("template2t1w_xfm")),
             anat_name(inv, "xfm", ".txt"), _sidecar(t1w_src, metrics_tpl))
        _put(tree, written, _first(outputs.get("t1w_template")),
             anat_name([("space", template_space), ("desc", "preproc")], "T1w"),
             _sidecar(t1w_src, metrics_tpl, SkullStripped=False))

    for i, image in enumerate(images):
        _, suffix, _ = drv.parse_name(image["path"])
        suffix = image.get("suffix") or suffix
        folder = drv.subject_dir(output_dir, sub, ses, drv.DATATYPE.get(suffix, "anat"))
        ents = drv.image_entities(image["path"], sub, ses)
        src = [drv.bids_uri(image["path"], bids_dir)]
        pair = src + t1w_src

        def field(name, index=i):
            items = fields[name]
            return items[index] if index < len(items) else None

        fwd = ents + [("from", suffix), ("to", "T1w"), ("mode", "image")]
        inv = ents + [("from", "T1w"), ("to", suffix), ("mode", "image")]
        _put(tree, written, field("coreg_xfms"), folder / drv.build_name(fwd, "xfm", ".txt"),
             _sidecar(pair, metrics_img[i]))
        _put(tree, written, field("t1w2image_xfms"),
             folder / drv.build_name(inv, "xfm", ".txt"), _sidecar(pair, metrics_img[i]))
        for space, key in (("T1w", "images_t1w"), (normalised, "images_template")):
            path = field(key)
            if space and path:
                name = drv.build_name(drv.with_space(ents, space), _image_suffix(path, suffix),
                                      ".nii.gz")
                extra = {"SkullStripped": False}
                if space == "T1w":
                    extra["SpatialReference"] = t1w_ref_uri
                _put(tree, written, path, folder / name, _sidecar(pair, metrics_img[i], **extra))

    figures = Path(output_dir) / f"sub-{sub}" / "figures"
    for path, name in zip(_as_list(outputs.get("reportlets")),
                          _figure_names(prefix, images, template_space,
                                        len(_as_list(outputs.get("reportlets"))))):
        _put(tree, written, path, figures / name)
    LOGGER.info("sub-%s%s: %d derivatives written", sub, f" ses-{ses}" if ses else "",
                len(written))
    if problems:
        raise ImplausibleRegistrationError("; ".join(problems))
    return written


class _SubjectSinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    bids_dir = traits.Str(mandatory=True, desc="raw dataset root")
    subject_data = traits.Dict(mandatory=True, desc="as given to init_single_subject_wf")
    template_space = traits.Either(None, traits.Str, default=None, usedefault=True)


for _field in OUTPUT_FIELDS:
    _SubjectSinkInputSpec.add_class_trait(_field, traits.Any(desc=f"outputnode.{_field}"))


class _SubjectSinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="files written")


class SubjectSink(SimpleInterface):
    """Write a subject's outputs into ``output_dir`` atomically (always reruns)."""

    input_spec = _SubjectSinkInputSpec
    output_spec = _SubjectSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        outputs = {}
        for name in OUTPUT_FIELDS:
            value = getattr(self.inputs, name)
            if isdefined(value):
                outputs[name] = value
        self._results["out_files"] = sink_subject(
            self.inputs.output_dir, self.inputs.bids_dir, self.inputs.subject_data, outputs,
            self.inputs.template_space)
        return runtime


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    bids_dir = traits.Str(mandatory=True, desc="raw dataset root (never written into)")
    subject = traits.Str(mandatory=True, desc="subject label")
    in_files = traits.List(traits.Any, desc="files written by the subject's sinks (ordering)")


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = traits.Str(desc="the subject's HTML report")


class SubjectReport(SimpleInterface):
    """Write ``sub-<label>.html`` once all the subject's sessions are sunk (always reruns)."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from niaffine.bidsapp.reports import write_subject_report

        tree = drv.OutputTree(Path(self.inputs.output_dir), Path(self.inputs.bids_dir))
        path = write_subject_report(tree, self.inputs.subject)
        self._results["out_report"] = str(path)
        return runtime
