# SPDX-License-Identifier: Apache-2.0
"""The dataset-wide Nipype graph: one ``sub_<label>[_ses_<label>]_wf`` per subject/session.

Each subject/session workflow comes from
:func:`niaffine.workflows.base.init_single_subject_wf`; the BIDS-App adds a sink
per subject/session and one report node per subject that waits for all its
sessions.
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
    by_subject: dict[str, list] = {}
    for data in subjects:
        name = subject_wf_name(data["subject"], data.get("session"))
        spaces = list(settings.output_spaces)
        if settings.template is not None:  # the workflows take a user template by path
            spaces = ["T1w", str(settings.template)]
        single = init_single_subject_wf(
            subject_data=data,
            output_spaces=spaces,
            template=str(settings.template) if settings.template else None,
            template_mask=str(settings.template_mask) if settings.template_mask else None,
            dof_template=settings.dof,
            dof_coreg=settings.dof_coreg,
            metric=settings.metric,
            resample_bold=settings.resample_bold,
            device=settings.device,
            seed=settings.random_seed,
            omp_nthreads=settings.omp_nthreads,
            name=name,
        )
        sink = pe.Node(
            SubjectSink(output_dir=str(settings.output_dir), bids_dir=str(settings.bids_dir),
                        subject_data=data, template_space=settings.template_space),
            name=name.replace("_wf", "_ds"), run_without_submitting=True)
        fields = [f for f in _outputnode_fields(single) if f in OUTPUT_FIELDS]
        workflow.connect([(single, sink, [(f"outputnode.{f}", f) for f in fields])])
        by_subject.setdefault(data["subject"], []).append(sink)
    for subject, sinks in by_subject.items():
        merge = pe.Node(niu.Merge(len(sinks)), name=f"sub_{subject}_merge",
                        run_without_submitting=True)
        report = pe.Node(SubjectReport(output_dir=str(settings.output_dir), subject=subject),
                         name=f"sub_{subject}_report", run_without_submitting=True)
        for i, sink in enumerate(sinks, start=1):
            workflow.connect(sink, "out_files", merge, f"in{i}")
        workflow.connect(merge, "out", report, "in_files")
    LOGGER.info("workflow %s: %d subject/session graphs", workflow.name, len(subjects))
    return workflow
