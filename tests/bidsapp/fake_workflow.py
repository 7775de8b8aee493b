# SPDX-License-Identifier: Apache-2.0
"""A stand-in for ``init_single_subject_wf`` (same signature and outputnode) for fast tests.

It "registers" nothing: every transform is the identity and every resampled image is a
copy, so the BIDS-App mechanics (graph, sink, names, sidecars, reports, reruns, errors)
are tested in seconds, independently of the engine.
"""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine import spaces as sp

FIELDS = ["t1w_preproc", "t1w_mask", "t1w_brain", "t1w2template_xfm", "template2t1w_xfm",
          "t1w_template", "template", "coreg_xfms", "t1w2image_xfms", "images_t1w",
          "images_template", "reportlets", "metrics", "anat_reports", "template_run_facts",
          "image_outputs"]


def fake_outputs(subject_data, template_space, fail_subject, fail_input, pid_dir, sleep_s,
                 xfm_offset):
    """Write identity outputs in the node's folder (self-contained for nipype's Function).

    With ``pid_dir`` the process announces itself there (``<subject>-<pid>``, so a test can
    kill it) and then sleeps ``sleep_s`` seconds, or until a file ``go`` appears there.
    ``xfm_offset`` (mm) is the translation of every coregistration (0: the identity).
    """
    import json
    import os
    import time

    import nibabel as nb
    import numpy as np

    if pid_dir:
        open(os.path.join(pid_dir, f"{subject_data['subject']}-{os.getpid()}"), "w").close()
        deadline = time.monotonic() + sleep_s
        while time.monotonic() < deadline and not os.path.exists(os.path.join(pid_dir, "go")):
            time.sleep(0.05)
    if subject_data["subject"] == fail_subject:
        raise RuntimeError(f"simulated failure of sub-{fail_subject}")
    if subject_data["subject"] == fail_input:
        from niaffine.errors import InputError

        raise InputError(f"moving image {subject_data['t1w']} holds non-finite values")
    identity, coreg = (("#Insight Transform File V1.0\n#Transform 0\n"
                        "Transform: AffineTransform_double_3_3\n"
                        f"Parameters: 1 0 0 0 1 0 0 0 1 {t} {t} {t}\nFixedParameters: 0 0 0\n")
                       for t in (0, xfm_offset))
    cwd = os.getcwd()

    def save(data, ref, name):
        path = os.path.join(cwd, name)
        nb.save(nb.Nifti1Image(data, ref.affine), path)
        return path

    def text(name, content):
        path = os.path.join(cwd, name)
        with open(path, "w") as handle:
            handle.write(content)
        return path

    def metrics(name, source, target, dof):
        return text(name, json.dumps({
            "source": source, "target": target, "metric": "mi", "final_metric": -0.5,
            "dof": dof, "iterations": 10, "elapsed_s": 0.1, "mask_volume_ml": 1400.0}))

    t1w = nb.load(subject_data["t1w"])
    data = np.asarray(t1w.dataobj, dtype=np.float32)
    mask = (data > 0).astype(np.uint8)
    out = {
        "t1w_preproc": save(data, t1w, "t1w_preproc.nii.gz"),
        "t1w_mask": save(mask, t1w, "t1w_mask.nii.gz"),
        "t1w_brain": save(data * mask, t1w, "t1w_brain.nii.gz"),
        "coreg_xfms": [], "t1w2image_xfms": [], "images_t1w": [], "images_template": [],
        "reportlets": [],
        "metrics": [], "anat_reports": {}, "template_run_facts": None, "image_outputs": [],
    }

    def svg(name):
        out["reportlets"].append(text(name, '<svg xmlns="http://www.w3.org/2000/svg" '
                                      'width="40" height="20"><rect width="40" height="20" '
                                      'fill="#369"/></svg>'))
        return out["reportlets"][-1]

    out["anat_reports"]["brain_mask"] = svg("mask_report.svg")
    if template_space:
        out["t1w2template_xfm"] = text("t1w2template.txt", identity)
        out["template2t1w_xfm"] = text("template2t1w.txt", identity)
        out["t1w_template"] = save(data, t1w, "t1w_template.nii.gz")
        out["template"] = template_space
        out["metrics"].append(metrics("metrics_t1w.json", subject_data["t1w"], template_space,
                                      12))
        out["template_run_facts"] = out["metrics"][-1]
        out["anat_reports"]["normalisation"] = svg("template_report.svg")
    for i, image in enumerate(subject_data["images"]):
        img = nb.load(image["path"])
        arr = np.asarray(img.dataobj, dtype=np.float32)
        if arr.ndim == 4:
            arr = arr.mean(axis=-1)
        out["coreg_xfms"].append(text(f"coreg{i}.txt", coreg))
        out["t1w2image_xfms"].append(text(f"inv{i}.txt", identity))
        out["images_t1w"].append(save(arr, img, f"image{i}_t1w.nii.gz"))
        if template_space:
            out["images_template"].append(save(arr, img, f"image{i}_tpl.nii.gz"))
        out["metrics"].append(metrics(f"metrics{i}.json", image["path"], subject_data["t1w"], 6))
        out["image_outputs"].append({
            "coreg_xfm": out["coreg_xfms"][-1], "coreg_inv_xfm": out["t1w2image_xfms"][-1],
            "image_t1w": out["images_t1w"][-1], "coreg_run_facts": out["metrics"][-1],
            "coreg_report": svg(f"coreg{i}_report.svg")})
        if template_space:
            out["image_outputs"][-1]["image_template"] = out["images_template"][-1]
    fields = ["t1w_preproc", "t1w_mask", "t1w_brain", "t1w2template_xfm", "template2t1w_xfm",
              "t1w_template", "template", "coreg_xfms", "t1w2image_xfms", "images_t1w",
              "images_template", "reportlets", "metrics", "anat_reports", "template_run_facts",
              "image_outputs"]
    return tuple(out.get(f) for f in fields)


def init_single_subject_wf(*, subject_data, spaces=("T1w", "MNI152NLin2009aSym"),
                           template=None, template_mask=None, dof_template=12, dof_coreg=6,
                           metric="mi", resample_bold=False, hmc=True, device="cpu", seed=0,
                           omp_nthreads=1, precomputed_brainmask=False,
                           precomputed_normalisation=False,
                           name="single_subject_wf", fail_subject="", fail_input="",
                           pid_dir="", sleep_s=0.0, xfm_offset=0.0):
    """Same signature and outputnode as the real factory."""
    workflow = pe.Workflow(name=name)
    parsed = [s if isinstance(s, sp.Space) else sp.parse_space(str(s)) for s in spaces]
    spaces = [str(s.path) if s.kind == "file" else s.name for s in parsed if s.is_template]
    fake = pe.Node(niu.Function(input_names=["subject_data", "template_space", "fail_subject",
                                             "fail_input", "pid_dir", "sleep_s", "xfm_offset"],
                                output_names=FIELDS, function=fake_outputs), name="fake")
    fake.inputs.subject_data = subject_data
    fake.inputs.template_space = spaces[0] if spaces else ""
    fake.inputs.fail_subject = fail_subject
    fake.inputs.fail_input = fail_input
    fake.inputs.pid_dir = pid_dir
    fake.inputs.sleep_s = sleep_s
    fake.inputs.xfm_offset = xfm_offset
    outputnode = pe.Node(niu.IdentityInterface(fields=FIELDS), name="outputnode")
    workflow.connect([(fake, outputnode, [(f, f) for f in FIELDS])])
    return workflow
