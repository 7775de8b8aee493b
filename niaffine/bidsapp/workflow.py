# SPDX-License-Identifier: Apache-2.0
"""The dataset-wide Nipype graph: one ``sub_<label>[_ses_<label>]_wf`` per subject/session.

Each subject/session workflow comes from
:func:`niaffine.workflows.base.init_single_subject_wf`; the BIDS-App adds a sink
per subject/session and one report node per subject that waits for all its
sessions. With ``--batch-size N`` (N > 1) and a template space, the T1w-to-template
registrations of every N subjects/sessions run as one batched engine call
(``batch_template_<k>_wf``) whose results each subject's graph takes as given.
"""

from __future__ import annotations

import logging
import re

from niaffine import __version__
from niaffine.bidsapp.settings import Settings
from niaffine.bidsapp.sink import OUTPUT_FIELDS, SubjectReport, SubjectSink

LOGGER = logging.getLogger("niaffine.bidsapp")


def workflow_name(version: str = __version__) -> str:
    """Name of the top-level workflow: ``niaffine_<major>_<minor>_wf`` (as fMRIPrep).

    Only the major and minor versions are used, so that a work directory keeps
    its cache across patch releases (and development snapshots).

    >>> workflow_name("1.2.0.dev3+g1a2b")
    'niaffine_1_2_wf'
    """
    parts = re.findall(r"\d+", version.split("+")[0])[:2]
    return "niaffine_" + "_".join(parts or ["dev"]) + "_wf"


def subject_wf_name(subject: str, session: str | None) -> str:
    """``sub_01_wf`` or ``sub_01_ses_A_wf``."""
    return f"sub_{subject}" + (f"_ses_{session}" if session else "") + "_wf"


def _outputnode_fields(workflow) -> list[str]:
    node = workflow.get_node("outputnode")
    return [] if node is None else list(node.outputs.copyable_trait_names())


def init_niaffine_wf(settings: Settings, subjects: list[dict]):
    """Build the whole run's workflow.

    Parameters
    ----------
    settings : Settings
        Checked run settings.
    subjects : list of dict
        ``subject_data`` dicts from :func:`niaffine.bidsapp.queries.collect_subjects`.

    Returns
    -------
    workflow : nipype.pipeline.engine.Workflow
        Named by :func:`workflow_name`, with ``base_dir`` the work directory.
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from niaffine.workflows.base import init_single_subject_wf

    workflow = pe.Workflow(name=workflow_name(settings.version), base_dir=str(settings.work_dir))
    workflow.config["execution"].update({
        "crashdump_dir": str(settings.output_dir / "logs"),
        "crashfile_format": "txt",
        "stop_on_first_crash": settings.stop_on_first_crash,
        "remove_unnecessary_outputs": False,
        "parameterize_dirs": False,
    })
    if settings.resample_bold and settings.hmc:
        LOGGER.warning("--resample-bold has no effect: realigned BOLD series are always "
                       "resampled into the output spaces (it only applies with --no-hmc)")
    # the workflow names every space's outputs by its entities (res-N, cohort-M included);
    # template_space only names the outputs of a workflow without template_outputs
    template = next((space for space in settings.spaces if space.is_template), None)
    template_space = template.entities() if template is not None else None
    batched = settings.batch_size > 1 and template is not None
    singles = []
    by_subject: dict[str, list] = {}
    for data in subjects:
        name = subject_wf_name(data["subject"], data.get("session"))
        single = init_single_subject_wf(
            subject_data=data,
            spaces=settings.spaces,
            dof_template=settings.dof,
            dof_coreg=settings.dof_coreg,
            metric=settings.metric,
            resample_bold=settings.resample_bold,
            hmc=settings.hmc,
            device=settings.device,
            seed=settings.random_seed,
            omp_nthreads=settings.omp_nthreads,
            precomputed_brainmask=batched,
            precomputed_normalisation=batched,
            name=name,
        )
        singles.append(single)
        sink = pe.Node(
            SubjectSink(output_dir=str(settings.output_dir), bids_dir=str(settings.bids_dir),
                        subject_data=data, template_space=template_space),
            name=name.replace("_wf", "_ds"), run_without_submitting=True)
        fields = [f for f in _outputnode_fields(single) if f in OUTPUT_FIELDS]
        workflow.connect([(single, sink, [(f"outputnode.{f}", f) for f in fields])])
        by_subject.setdefault(data["subject"], []).append(sink)
    for subject, sinks in by_subject.items():
        merge = pe.Node(niu.Merge(len(sinks)), name=f"sub_{subject}_merge",
                        run_without_submitting=True)
        report = pe.Node(SubjectReport(output_dir=str(settings.output_dir),
                                       bids_dir=str(settings.bids_dir), subject=subject),
                         name=f"sub_{subject}_report", run_without_submitting=True)
        for i, sink in enumerate(sinks, start=1):
            workflow.connect(sink, "out_files", merge, f"in{i}")
        workflow.connect(merge, "out", report, "in_files")
    if batched:
        _connect_batches(workflow, settings, singles)
    LOGGER.info("workflow %s: %d subject/session graphs", workflow.name, len(subjects))
    return workflow


def _connect_batches(workflow, settings: Settings, singles: list) -> None:
    """Register the subjects' T1w brains to each template ``settings.batch_size`` at a time.

    Each subject/session graph gets its brain mask from a ``sub_<label>_anat_wf`` beside it
    (a graph cannot feed its own inputs: nipype needs a DAG at every level); each chunk of
    subjects one ``batch_template_<k>_wf`` per template (``batch_template_<space>_<k>_wf``
    for the second and later templates); each subject a ``sub_<label>[_<space>]_batch``
    node that takes its item, or fails (in that subject's part of the graph only) with its
    error.
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from niaffine.interfaces.batch import SelectBatchItem
    from niaffine.workflows.brainmask import init_brainmask_wf
    from niaffine.workflows.space_outputs import registration_id, template_groups
    from niaffine.workflows.template import BATCH_FIELDS, init_batch_template_wf

    size = settings.batch_size
    anat = {}
    for single in singles:
        stem = single.name[: -len("_wf")]
        anat[stem] = init_brainmask_wf(device=settings.device,
                                       omp_nthreads=settings.omp_nthreads, name=f"{stem}_anat_wf")
        anat[stem].inputs.inputnode.t1w = single.get_node("inputnode").inputs.t1w
        workflow.connect([(anat[stem], single, [
            (f"outputnode.{field}", f"anatnode.{field}")
            for field in ("out_brain", "out_mask", "out_report")])])
    for g, (registered, _) in enumerate(template_groups(settings.spaces)):
        tag = "" if g == 0 else f"_{registration_id(registered)}"
        for k, start in enumerate(range(0, len(singles), size)):
            chunk = singles[start:start + size]
            batch_wf = init_batch_template_wf(
                n_subjects=len(chunk), space=registered, dof=settings.dof,
                metric=settings.metric, device=settings.device, seed=settings.random_seed,
                omp_nthreads=settings.omp_nthreads, name=f"batch_template{tag}_{k}_wf")
            brains = pe.Node(niu.Merge(len(chunk)), name=f"batch{tag}_{k}_brains",
                             run_without_submitting=True)
            masks = pe.Node(niu.Merge(len(chunk)), name=f"batch{tag}_{k}_masks",
                            run_without_submitting=True)
            workflow.connect([(brains, batch_wf, [("out", "inputnode.t1w_brains")]),
                              (masks, batch_wf, [("out", "inputnode.t1w_masks")])])
            for index, single in enumerate(chunk):
                stem = single.name[: -len("_wf")]
                item = pe.Node(SelectBatchItem(index=index), run_without_submitting=True,
                               name=f"{stem}{tag}_batch")
                normnode = f"normnode{tag}"
                # fmt: off
                workflow.connect([
                    (anat[stem], brains, [("outputnode.out_brain", f"in{index + 1}")]),
                    (anat[stem], masks, [("outputnode.out_mask", f"in{index + 1}")]),
                    (batch_wf, item, [(f"outputnode.{f}", f) for f in BATCH_FIELDS]),
                    (item, single, [
                        ("composite_transform", f"{normnode}.t1w2template_xfm"),
                        ("inverse_composite_transform", f"{normnode}.template2t1w_xfm"),
                        ("warped_image", f"{normnode}.t1w_template"),
                        ("run_facts", f"{normnode}.template_run_facts")]),
                ])
                # fmt: on
    LOGGER.info("T1w-to-template registrations in %d batches of up to %d",
                -(-len(singles) // size), size)
