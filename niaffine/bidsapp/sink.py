# SPDX-License-Identifier: Apache-2.0
"""Sink one subject's (and session's) workflow outputs into BIDS-Derivatives.

:func:`sink_subject` is a plain function (tested on its own); :class:`SubjectSink`
is the thin Nipype interface the dataset-wide graph uses. The sink always runs, so
a rerun with a cached work directory rewrites every derivative.

Every name comes from :func:`niaffine.bidsapp.names.build_name`: the raw image's entities,
plus the entities of the output (``space``, ``desc``, ``from``/``to``/``mode``); each image
output of the workflow arrives labelled by its role (``image_outputs``), never by position
in a list of files.
"""

from __future__ import annotations

import dataclasses
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

from niaffine import __version__, choices
from niaffine.bidsapp import derivatives as drv
from niaffine.bidsapp.names import build_name, source_entities, space_entities, space_label
from niaffine.bidsapp.series_sink import sink_series

LOGGER = logging.getLogger("niaffine.bidsapp")

#: ``outputnode`` fields of ``init_single_subject_wf`` that the sink consumes.
OUTPUT_FIELDS = (
    "t1w_preproc", "t1w_mask", "t1w_brain", "t1w2template_xfm", "template2t1w_xfm",
    "t1w_template", "template", "template_run_facts", "anat_reports", "image_outputs",
    "template_outputs",
)
_METRIC_KEYS = {"metric": "Metric", "final_metric": "FinalMetric", "dof": "DOF",
                "iterations_total": "Iterations", "elapsed_s": "ElapsedSeconds",
                "mask_volume_ml": "MaskVolumeML", "batch_size": "BatchSize"}
#: Roles of an image's outputs that depend on its coregistration (dropped when implausible).
COREG_ROLES = ("coreg_xfm", "coreg_inv_xfm", "image_t1w", "image_template", "series_t1w",
               "reference_t1w", "mask_t1w", "bvec_t1w", "series_template",
               "reference_template", "mask_template")


def _defined(value) -> bool:
    return value is not None and (isinstance(value, str | Path | dict) or isdefined(value))


def _given(value):
    """A single output (a path), None when undefined or empty."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return value if _defined(value) and value != "" else None


def load_facts(path) -> dict | None:
    """A run-facts JSON file (None when missing or unreadable)."""
    if not _given(path):
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        LOGGER.warning("unreadable metrics file %s: %s", path, exc)
        return None


@dataclasses.dataclass
class Writer:
    """Writes derivatives of one subject/session: files, their sidecars, the list of both."""

    tree: drv.OutputTree
    bids_dir: Path
    written: list = dataclasses.field(default_factory=list)

    def uri(self, path: Path) -> str:
        """``bids::<relative path>`` of a derivative of this run."""
        return "bids::" + Path(path).relative_to(self.tree.root).as_posix()

    def sidecar(self, sources, facts: dict | None = None, **extra) -> dict:
        """A sidecar: ``Sources``, ``GeneratedBy``, the registration's facts, ``extra``."""
        data = {"Sources": [drv.bids_uri(s, self.bids_dir) if not str(s).startswith("bids:")
                            else s for s in sources],
                "GeneratedBy": [{"Name": "niaffine", "Version": __version__}]}
        if facts:
            data.update({_METRIC_KEYS[k]: facts[k] for k in _METRIC_KEYS if k in facts})
            if "target" in facts:
                data["RegistrationTarget"] = Path(str(facts["target"])).name
        data.update({k: v for k, v in extra.items() if v is not None})
        return data

    def put(self, src, folder: Path, entities: dict, suffix: str, extension: str,
            sidecar: dict | None = None, repetition_time: float | None = None) -> Path | None:
        """Copy ``src`` to ``folder/<name>`` (and its JSON sidecar); None without ``src``."""
        src = _given(src)
        if not src:
            return None
        dst = folder / build_name(entities, suffix, extension)
        self.tree.copy_file(src, dst, repetition_time=repetition_time)
        self.written.append(str(dst))
        if sidecar is not None and entities.get("res") and extension.startswith(".nii"):
            sidecar = {**sidecar, "Resolution": resolution_text(entities, dst)}
        if sidecar is not None:
            json_path = folder / build_name(entities, suffix, ".json")
            self.written.append(str(self.tree.write_json(json_path, sidecar)))
        return dst


def resolution_text(entities: dict, path) -> str:
    """The ``Resolution`` sidecar key BIDS requires with a ``res`` entity.

    >>> import tempfile, nibabel as nb, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "a.nii"
    >>> nb.save(nb.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.diag([2, 2, 2, 1])), path)
    >>> resolution_text({"space": "MNI152NLin6Asym", "res": "2"}, path)
    'Template MNI152NLin6Asym, TemplateFlow resolution res-2 (2x2x2 mm voxels)'
    """
    import nibabel as nb

    zooms = "x".join(f"{z:g}" for z in nb.load(str(path)).header.get_zooms()[:3])
    return (f"Template {entities.get('space')}, TemplateFlow resolution res-{entities['res']} "
            f"({zooms} mm voxels)")


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


def _image_outputs(outputs: dict, images: list[dict]) -> list[dict]:
    items = outputs.get("image_outputs")
    items = list(items) if _defined(items) and isinstance(items, list | tuple) else []
    items = [item if isinstance(item, dict) else {} for item in items]
    if len(items) != len(images):  # a workflow that lost images: write none of them
        LOGGER.warning("%d image outputs for %d images; no image derivative written",
                       len(items), len(images))
        return [{} for _ in images]
    return items


def _template_reference(outputs: dict, template_space) -> str:
    label = space_entities(template_space)["space"]
    template = _given(outputs.get("template"))
    return label if label in choices.BUILTIN_TEMPLATES or not template else str(template)


def template_spaces(outputs: dict, template_space=None) -> list[dict]:
    """One dict per template output space (``entities``, ``spatial_reference`` and the
    files): the workflow's ``template_outputs``, else (an older workflow's single-template
    fields) ``template_space`` and those fields."""
    items = outputs.get("template_outputs")
    if isinstance(items, list | tuple):
        return [dict(item) for item in items if isinstance(item, dict)]
    if not template_space:
        return []
    return [{"entities": space_entities(template_space),
             "spatial_reference": _template_reference(outputs, template_space),
             "run_facts": outputs.get("template_run_facts"),
             "report": (outputs.get("anat_reports") or {}).get("normalisation")
             if isinstance(outputs.get("anat_reports"), dict) else None,
             **{key: outputs.get(key) for key in ("t1w2template_xfm", "template2t1w_xfm",
                                                  "t1w_template", "template")}}]


def image_spaces(item: dict, spaces: list[dict]) -> list[dict]:
    """One image's outputs per template space: its ``templates`` list, else (an older
    workflow's single roles) the first space's entities with its ``*_template`` roles."""
    names = {space["entities"].get("space") for space in spaces}
    if isinstance(item.get("templates"), list | tuple):
        return [dict(t) for t in item["templates"]
                if isinstance(t, dict) and t.get("entities", {}).get("space") in names]
    if not spaces:
        return []
    roles = ("image_template", "series_template", "reference_template", "mask_template")
    return [{"entities": spaces[0]["entities"],
             "spatial_reference": spaces[0].get("spatial_reference"),
             **{role: item[role] for role in roles if role in item}}]


def _sink_anat(w: Writer, anat: Path, prefix: dict, t1w, outputs: dict, spaces: list[dict]):
    """The T1w, its mask and brain, the normalisations; returns the T1w's URI."""
    t1w_src = [t1w]
    t1w_ref = w.put(outputs.get("t1w_preproc"), anat, prefix | {"desc": "preproc"}, "T1w",
                    ".nii.gz", w.sidecar(t1w_src, SkullStripped=False,
                                         Description="The T1w image all images are "
                                                     "registered to (T1w space)"))
    t1w_uri = w.uri(t1w_ref) if t1w_ref else None
    w.put(outputs.get("t1w_mask"), anat, prefix | {"desc": "brain"}, "mask", ".nii.gz",
          w.sidecar(t1w_src, Type="Brain", Description="Brain mask of the T1w",
                    SpatialReference=t1w_uri))
    w.put(outputs.get("t1w_brain"), anat, prefix | {"desc": "brain"}, "T1w", ".nii.gz",
          w.sidecar(t1w_src, SkullStripped=True, Description="The skull-stripped T1w",
                    SpatialReference=t1w_uri))
    xfms_written = set()
    for space in spaces:
        facts = load_facts(space.get("run_facts"))
        entities = dict(space["entities"])
        label = entities["space"]
        # one transform per template, for every grid of it: named without its res/cohort
        if label not in xfms_written:
            xfms_written.add(label)
            for key, src, dst in (("t1w2template_xfm", "T1w", label),
                                  ("template2t1w_xfm", label, "T1w")):
                w.put(space.get(key), anat, prefix | {"from": src, "to": dst, "mode": "image"},
                      "xfm", ".txt", w.sidecar(t1w_src, facts,
                                               Description=f"Affine transform, {src} to {dst}"))
        w.put(space.get("t1w_template"), anat, prefix | entities | {"desc": "preproc"}, "T1w",
              ".nii.gz", w.sidecar(t1w_src, facts, SkullStripped=False,
                                   Description=f"The T1w brain in {space_label(entities)} space",
                                   SpatialReference=space.get("spatial_reference")))
    return t1w_uri


def _sink_image(w: Writer, folder: Path, ents: dict, image: dict, item: dict, t1w, t1w_uri,
                spaces: list[dict]) -> None:
    """A static image (anatomical, or a series' reference with ``--no-hmc``)."""
    suffix = image["suffix"]
    pair = [image["path"], t1w]
    facts = load_facts(item.get("coreg_run_facts"))
    for key, src, dst in (("coreg_xfm", suffix, "T1w"), ("coreg_inv_xfm", "T1w", suffix)):
        w.put(item.get(key), folder, ents | {"from": src, "to": dst, "mode": "image"}, "xfm",
              ".txt", w.sidecar(pair, facts, Description=f"Affine transform, {src} to {dst}"))
    static_series = suffix in choices.SERIES_MODALITIES
    outputs = [({"space": "T1w"}, item.get("image_t1w"), t1w_uri)] + [
        (space["entities"], space.get("image_template"), space.get("spatial_reference"))
        for space in image_spaces(item, spaces)]
    for entities_space, path, ref in outputs:
        path = _given(path)
        if not path:
            continue
        entities = ents | entities_space
        out_suffix = suffix
        if static_series:
            import nibabel as nb

            shape = nb.load(str(path)).shape
            out_suffix = f"{suffix}ref" if len(shape) < 4 or shape[3] == 1 else suffix
        elif entities_space == {"space": "T1w"}:  # anatomical images in T1w space: smriprep's
            entities = ents | {"desc": "preproc"}
        else:
            entities |= {"desc": "preproc"}
        w.put(path, folder, entities, out_suffix, ".nii.gz",
              w.sidecar(pair, facts, SkullStripped=False, SpatialReference=ref,
                        Description=f"The {suffix} image in {space_label(entities_space)} "
                                    "space"))


def sink_subject(output_dir, bids_dir, subject_data: dict, outputs: dict,
                 template_space=None) -> list[str]:
    """Write one subject/session's outputs as BIDS-Derivatives.

    Parameters
    ----------
    output_dir, bids_dir : path-like
        Derivatives root and raw dataset root (for ``Sources``).
    subject_data : dict
        As given to ``init_single_subject_wf``.
    outputs : dict
        ``outputnode`` fields (see :data:`OUTPUT_FIELDS`); missing ones are skipped.
    template_space : str, dict or Space, optional
        Only for outputs without ``template_outputs`` (an older workflow's single
        template fields): that template space (a label, its entities, or an object with
        ``entities()``); ``None``: T1w only.

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

    w = Writer(drv.OutputTree(Path(output_dir), Path(bids_dir)), Path(bids_dir))
    sub, ses = subject_data["subject"], subject_data.get("session")
    t1w, images = subject_data["t1w"], list(subject_data.get("images", []))
    prefix = {"sub": sub, "ses": ses or None}
    problems, spaces, failed = [], [], set()
    for space in template_spaces(outputs, template_space):
        name = space["entities"].get("space")
        problem = None if name in failed else _implausible(
            _given(space.get("t1w2template_xfm")), _given(space.get("t1w_template")), t1w)
        if problem:
            problems.append(problem)
            failed.add(name)
        if name not in failed:
            spaces.append(space)
    anat = drv.subject_dir(output_dir, sub, ses, "anat")
    t1w_uri = _sink_anat(w, anat, prefix, t1w, outputs, spaces)
    figures = Path(output_dir) / f"sub-{sub}" / "figures"
    reports = outputs.get("anat_reports") if isinstance(outputs.get("anat_reports"), dict) \
        else {}
    w.put(reports.get("brain_mask"), figures, prefix | {"desc": "brain"}, "mask", ".svg")
    figured = set()
    for space in spaces:  # one normalisation figure per template
        name = space["entities"].get("space")
        if name not in figured:
            figured.add(name)
            w.put(space.get("report"), figures, prefix | {"space": name}, "T1w", ".svg")

    for image, item in zip(images, _image_outputs(outputs, images)):
        suffix = image["suffix"]
        item = dict(item)
        moving = item.get("reference") or image["path"]
        problem = _implausible(_given(item.get("coreg_xfm")), t1w, moving)
        if problem:
            problems.append(problem)
            for role in COREG_ROLES:
                item.pop(role, None)
        folder = drv.subject_dir(output_dir, sub, ses, drv.DATATYPE.get(suffix, "anat"))
        ents = source_entities(image["path"], sub, ses)
        if "hmc_xfm" in item:
            sink_series(w, folder, ents, image, item, t1w=t1w, t1w_uri=t1w_uri,
                        spaces=image_spaces(item, spaces))
        else:
            _sink_image(w, folder, ents, image, item, t1w, t1w_uri, spaces)
        w.put(item.get("coreg_report"), figures, ents | {"desc": "coreg"}, suffix, ".svg")
        for role, desc in (("motion_report", "motion"), ("realignment_report", "realignment")):
            w.put(item.get(role), figures, ents | {"desc": desc}, suffix, ".svg")
    LOGGER.info("sub-%s%s: %d derivatives written", sub, f" ses-{ses}" if ses else "",
                len(w.written))
    if problems:
        raise ImplausibleRegistrationError("; ".join(problems))
    return w.written


class _SubjectSinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    bids_dir = traits.Str(mandatory=True, desc="raw dataset root")
    subject_data = traits.Dict(mandatory=True, desc="as given to init_single_subject_wf")
    template_space = traits.Either(None, traits.Str, traits.Dict, default=None,
                                   usedefault=True,
                                   desc="template space: its label or its entities")


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
