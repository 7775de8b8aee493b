# SPDX-License-Identifier: Apache-2.0
"""Output spaces: fMRIPrep's grammar, and templates from a local TemplateFlow home (offline)."""

from __future__ import annotations

import pytest

from niaffine import spaces as sp
from tests.templateflow_home import TPL, block_network, grid_image, make_templateflow_home


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    block_network(monkeypatch)


@pytest.fixture
def tf_home(tmp_path, monkeypatch):
    """``TEMPLATEFLOW_HOME`` with MNI152NLin6Asym at res-2 only."""
    home = make_templateflow_home(tmp_path / "templateflow")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home


@pytest.mark.parametrize(("text", "expected"), [
    ("MNI152NLin6Asym:res-2", ("MNI152NLin6Asym", "standard", "2", None)),
    ("MNI152NLin2009cAsym", ("MNI152NLin2009cAsym", "standard", None, None)),
    ("MNI152NLin6Asym:res-native", ("MNI152NLin6Asym", "standard", "native", None)),
    ("MNIPediatricAsym:cohort-1:res-02", ("MNIPediatricAsym", "standard", "2", "1")),
    ("T1w", ("T1w", "nonstandard", None, None)),
    ("anat", ("T1w", "nonstandard", None, None)),
    ("func", ("func", "nonstandard", None, None)),
    ("boldref", ("func", "nonstandard", None, None)),
])
def test_grammar(text, expected):
    space = sp.parse_space(text)
    assert (space.name, space.kind, space.res, space.cohort) == expected


def test_entities_and_labels():
    assert sp.parse_space("MNIPediatricAsym:res-2:cohort-1").entities() == {
        "space": "MNIPediatricAsym", "cohort": "1", "res": "2"}
    assert sp.parse_space("MNI152NLin6Asym:res-native").entities() == {"space": TPL}
    assert sp.parse_space("MNI152NLin6Asym:cohort-1:res-2").label == f"{TPL}:cohort-1:res-2"
    assert sp.parse_space("anat").entities() == {"space": "T1w"}
    assert sp.parse_space("func").entities() == {}
    assert str(sp.parse_space("MNI152NLin6Asym:res-2")) == "MNI152NLin6Asym:res-2"


def test_default_resolutions_follow_fmriprep():
    bare, two = sp.parse_space(TPL), sp.parse_space(f"{TPL}:res-2")
    assert (bare.output_res(), bare.output_res(series=True)) == ("1", "native")
    assert (two.output_res(), two.output_res(series=True)) == ("2", "2")


@pytest.mark.parametrize(("text", "message"), [
    ("fsaverage:den-10k", "surface spaces need FreeSurfer"),
    ("MNI152NLin6Asym:den-10k", "unknown modifier 'den-10k'"),
    ("MNI152NLin6Asym:res-2mm", "res-2mm is neither"),
    ("MNI152NLin6Asym:res-1:res-2", "res given twice"),
    ("T1w:res-2", "T1w takes no modifiers"),
    ("MNI_152", "not a template identifier"),
    ("/no/such/tpl-X_T1w.nii.gz", "template file not found"),
])
def test_grammar_errors_are_one_line(text, message):
    with pytest.raises(sp.SpaceError, match=message) as exc:
        sp.parse_space(text)
    assert "\n" not in str(exc.value)


def test_several_spaces_and_files(tmp_path):
    tpl = tmp_path / "tpl-Mine_res-1_T1w.nii.gz"
    grid_image((9, 9, 9), 2.0, 1.0).to_filename(tpl)
    mask = tmp_path / "mask.nii.gz"
    grid_image((9, 9, 9), 2.0).to_filename(mask)
    spaces = sp.parse_spaces([f"{TPL}:res-2", "func", str(tpl), "anat"], template_mask=mask)
    assert [s.label for s in spaces] == ["T1w", f"{TPL}:res-2", "func", "Mine"]
    assert spaces[3].kind == "file" and spaces[3].path == tpl and spaces[3].mask == mask
    assert [s.label for s in sp.registration_targets(spaces)] == [TPL, "Mine"]
    with pytest.raises(sp.SpaceError, match="--template-mask needs exactly one"):
        sp.parse_spaces([TPL], template_mask=mask)


def test_templateflow_resolution(tf_home):
    found = sp.resolve_template(sp.parse_space(f"{TPL}:res-2"))
    folder = tf_home / f"tpl-{TPL}"
    assert found.source == "templateflow" and found.res == "2"
    assert found.t1w == folder / f"tpl-{TPL}_res-02_T1w.nii.gz"
    assert found.mask == folder / f"tpl-{TPL}_res-02_desc-brain_mask.nii.gz"
    # no res-1 here: the registration target falls back to the space's own grid
    assert sp.registration_target(sp.parse_space(f"{TPL}:res-2")).res == "2"
    sp.check_spaces(sp.parse_spaces([f"{TPL}:res-2", "T1w", "func"]))


def test_absent_template_or_resolution(tf_home):
    with pytest.raises(sp.SpaceError) as exc:
        sp.check_spaces([sp.parse_space(f"{TPL}:res-1")])
    message = str(exc.value)
    assert "\n" not in message
    assert f"template {TPL} at res-1 is not available in TEMPLATEFLOW_HOME={tf_home}" in message
    assert (f"import templateflow.api as tf; tf.get('{TPL}', resolution=1, desc=None, "
            "suffix='T1w')") in message
    with pytest.raises(sp.SpaceError, match="template MNI152NLin2009cAsym at res-2"):
        sp.resolve_template(sp.parse_space("MNI152NLin2009cAsym:res-2"))


def test_empty_skeleton_files_count_as_absent(tf_home):
    """TemplateFlow's skeleton has empty placeholders: they are not fetched, never used."""
    for path in (tf_home / f"tpl-{TPL}").glob("*res-02*"):
        path.write_bytes(b"")
    with pytest.raises(sp.SpaceError, match="not available"):
        sp.resolve_template(sp.parse_space(f"{TPL}:res-2"))


def test_missing_home_is_not_created(tmp_path, monkeypatch):
    home = tmp_path / "nowhere"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    with pytest.raises(sp.SpaceError, match=f"TEMPLATEFLOW_HOME={home}"):
        sp.resolve_template(sp.parse_space(f"{TPL}:res-2"))
    assert not home.exists()


def test_builtin_template_without_templateflow(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    for res in ("1", "2"):
        found = sp.resolve_template(sp.parse_space(f"MNI152NLin2009aSym:res-{res}"))
        assert (found.source, found.res) == ("builtin", res)
    with pytest.raises(sp.SpaceError, match="built in: MNI152NLin2009aSym at res-1 and res-2"):
        sp.resolve_template(sp.parse_space("MNI152NLin2009aSym:res-3"))


def test_real_templateflow_skeleton(tmp_path, monkeypatch):
    """TemplateFlow's own skeleton (every file an empty placeholder, as after a fresh
    install): nothing resolves and nothing is fetched; a template whose two files are then
    filled in (as ``tf.get`` would) resolves, by TemplateFlow's real file names."""
    import importlib.util
    import zipfile
    from pathlib import Path

    spec = importlib.util.find_spec("templateflow")
    skeleton = Path(spec.submodule_search_locations[0]) / "conf" / "templateflow-skel.zip"
    home = tmp_path / "skeleton"
    zipfile.ZipFile(skeleton).extractall(home)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    with pytest.raises(sp.SpaceError, match=f"template {TPL} at res-2 is not available"):
        sp.resolve_template(sp.parse_space(f"{TPL}:res-2"))
    folder = home / f"tpl-{TPL}"
    grid_image((41, 49, 39), 2.0, 100.0).to_filename(folder / f"tpl-{TPL}_res-02_T1w.nii.gz")
    grid_image((41, 49, 39), 2.0).to_filename(folder / f"tpl-{TPL}_res-02_desc-brain_mask.nii.gz")
    found = sp.resolve_template(sp.parse_space(f"{TPL}:res-2"))
    assert (found.source, found.t1w.name) == ("templateflow", f"tpl-{TPL}_res-02_T1w.nii.gz")
    assert found.mask.name == f"tpl-{TPL}_res-02_desc-brain_mask.nii.gz"
