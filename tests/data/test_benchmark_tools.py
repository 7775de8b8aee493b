# SPDX-License-Identifier: Apache-2.0
"""Conversions used by the benchmark harness: torchreg theta and ANTs files to world matrices."""

import nibabel as nib
import numpy as np
import pytest

from benchmarks import tools
from niaffine.data import synthetic, templates


@pytest.fixture(scope="module")
def small_pair():
    """The MNI T1 at 4 mm (fixed) and its image through a known affine on an LPS 3-4 mm grid."""
    t1 = templates.load_mni_t1()
    grid = synthetic.make_grid(shape=(50, 58, 48), voxel_size=4.0, centre=(0, -18, 8))
    fixed = synthetic.warp_to_grid(t1, np.eye(4), grid, (50, 58, 48))
    matrix = synthetic.random_affine(np.random.default_rng(3), dof=12, max_rotation_deg=15,
                                     max_translation_mm=10, centre=(0, -18, 8))
    mgrid = synthetic.make_grid(shape=(60, 56, 50), voxel_size=(3.0, 4.0, 3.5),
                                orientation="LPS", oblique_deg=10.0, centre=(0, -18, 8))
    moving = synthetic.warp_to_grid(t1, matrix, mgrid, (60, 56, 50))
    return fixed, moving, matrix


def _corr(a, b):
    inside = (a > 0) | (b > 0)
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def test_normalised_to_voxel_corners():
    v = tools.normalised_to_voxel((5, 7, 9))
    assert np.allclose(v @ [-1, -1, -1, 1], [0, 0, 0, 1])
    assert np.allclose(v @ [1, 1, 1, 1], [4, 6, 8, 1])
    assert np.allclose(v @ [1, -1, -1, 1], [0, 0, 8, 1])  # x runs along the last axis


def test_theta_round_trip(small_pair):
    fixed, moving, matrix = small_pair
    grid, shape = tools.common_grid([fixed, moving])
    theta = tools.world_to_torchreg_theta(matrix, grid, shape)
    assert np.allclose(tools.torchreg_theta_to_world(theta, grid, shape), matrix)


def test_common_grid_covers_both(small_pair):
    fixed, moving, _ = small_pair
    grid, shape = tools.common_grid([fixed, moving], spacing=2.0)
    assert nib.aff2axcodes(grid) == ("R", "A", "S")
    low = nib.affines.apply_affine(grid, [-0.5, -0.5, -0.5])
    high = nib.affines.apply_affine(grid, np.array(shape) - 0.5)
    for img in (fixed, moving):
        corners = nib.affines.apply_affine(img.affine, np.array(
            [[a, b, c] for a in (0, img.shape[0] - 1) for b in (0, img.shape[1] - 1)
             for c in (0, img.shape[2] - 1)]))
        assert np.all(corners >= low - 1e-6) and np.all(corners <= high + 1e-6)


def test_torchreg_theta_resamples_moving_onto_fixed(small_pair):
    """torchreg's own resampler, given the converted theta, maps the moving onto the fixed."""
    torch = pytest.importorskip("torch")
    affine_mod = pytest.importorskip("torchreg.affine")
    fixed, moving, matrix = small_pair
    grid, shape = tools.common_grid([fixed, moving], spacing=2.0)
    f = np.asanyarray(synthetic.warp_to_grid(fixed, np.eye(4), grid, shape).dataobj)
    m = np.asanyarray(synthetic.warp_to_grid(moving, np.eye(4), grid, shape).dataobj)

    def resample(mat):
        theta = torch.from_numpy(tools.world_to_torchreg_theta(mat, grid, shape)).float()
        out = affine_mod.affine_transform(torch.from_numpy(m)[None, None], theta[None],
                                          padding_mode="zeros")
        return out[0, 0].numpy()

    assert _corr(resample(matrix), f) > 0.95
    assert _corr(resample(np.linalg.inv(matrix)), f) < 0.6  # the other direction is wrong


def test_ants_file_to_world_matrix(small_pair, tmp_path):
    """A known ANTs affine: ANTs' resampling equals nitransforms' with the converted matrix."""
    ants = pytest.importorskip("ants")
    from nitransforms.linear import Affine
    from nitransforms.resampling import apply

    fixed, moving, _ = small_pair
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    tx.set_parameters([0.98, 0.1, 0.0, -0.1, 0.99, 0.05, 0.0, -0.04, 1.02, 3.0, -5.0, 7.0])
    tx.set_fixed_parameters([1.0, -18.0, 8.0])
    path = tmp_path / "affine.mat"
    ants.write_transform(tx, str(path))
    matrix = tools.ants_transform_to_world(path)
    # points: ANTs works in LPS, the matrix in RAS
    flip = np.diag([-1.0, -1.0, 1.0])
    point = np.array([12.0, -30.0, 25.0])
    expected = flip @ np.asarray(tx.apply_to_point(list(flip @ point)))
    assert np.allclose(nib.affines.apply_affine(matrix, point), expected, atol=1e-4)
    # images: ANTs resampling with the file equals nitransforms resampling with the matrix
    paths = {}
    for name, img in (("fixed", fixed), ("moving", moving)):
        paths[name] = str(tmp_path / f"{name}.nii")
        nib.save(img, paths[name])
    by_ants = ants.apply_transforms(ants.image_read(paths["fixed"]),
                                    ants.image_read(paths["moving"]), [str(path)]).numpy()
    by_nt = np.asanyarray(apply(Affine(matrix, reference=fixed), moving, reference=fixed,
                                order=1).dataobj)
    assert _corr(by_ants, by_nt) > 0.999


def _rows():
    rows = []
    for tool, err, sec in (("niaffine", 0.1, 2.0), ("ants", 0.05, 20.0), ("torchreg", 4.0, 10.0)):
        for case in range(3):
            rows.append({"tool": tool, "contrast": "T2", "case": case, "seed": [0, case],
                         "status": "ok", "mean_error_mm": err * (1 + case),
                         "max_error_mm": 2 * err, "seconds": sec, "peak_rss_mb": 500.0})
    rows.append({"tool": "ants", "contrast": "T2", "case": 3, "seed": [0, 3],
                 "status": "timeout", "message": "no result"})
    return rows


def test_summary_and_docs_section(tmp_path):
    from benchmarks import report

    summary = {s["tool"]: s for s in report.summarise(_rows())}
    assert summary["ants"]["cases"] == 4 and summary["ants"]["failures"] == 1
    assert summary["ants"]["time_ratio"] == pytest.approx(10.0)
    assert summary["torchreg"]["failures"] == 3
    assert summary["niaffine"]["median_error_mm"] == pytest.approx(0.2)
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nintro\n\n{report.BEGIN_MARK}\nold\n{report.END_MARK}\n\nafter\n")
    report.update_docs_section(doc, list(summary.values()), {"date": "today"},
                               "benchmarks/results.md", "benchmarks/error_vs_time.png")
    text = doc.read_text()
    assert "old" not in text and "after" in text and "| T2 | ants | 4 |" in text
    report.write_raw(_rows(), tmp_path)
    assert (tmp_path / "results.csv").read_text().count("\n") == 11
    assert report.plot_error_vs_time(_rows(), tmp_path / "plot.png").is_file()


def test_torchreg_theta_of_a_pure_translation():
    """A world translation is a pure translation in normalised units, with axes reversed."""
    grid = np.diag([1.0, 1.0, 1.0, 1.0])
    grid[:3, 3] = [-100.0, -130.0, -70.0]
    shape = (201, 241, 161)  # half-widths 100, 120 and 80 voxels
    shift = np.eye(4)
    shift[:3, 3] = [2.0, -3.0, 4.0]
    theta = tools.world_to_torchreg_theta(shift, grid, shape)
    assert np.allclose(theta[:, :3], np.eye(3))
    # normalised x runs along the last array axis (world z here), z along the first (world x)
    assert np.allclose(theta[:, 3], [4.0 / 80.0, -3.0 / 120.0, 2.0 / 100.0])
    assert np.allclose(tools.torchreg_theta_to_world(theta, grid, shape), shift)


def test_batch_table_names_device_speedup_and_agreement():
    from benchmarks import report

    mode = {"seconds": 2.0, "pairs_per_second": 4.0, "median_error_mm": 0.06, "max_error_mm": 0.08}
    batch = {"pairs": 8, "contrast": "T1", "device": "cuda", "gpu": "NVIDIA H200",
             "sequential": {**mode, "seconds": 8.0, "pairs_per_second": 1.0}, "batched": mode,
             "speedup": 4.0, "max_batch_difference_mm": 0.0021, "peak_gpu_memory_mb_one": 900.0,
             "peak_gpu_memory_mb": 6000.0}
    table = report.batch_table(batch)
    assert "8 pairs of T1 on NVIDIA H200" in table and "speed-up 4.00x" in table
    assert "0.0021 mm" in table and "| 8 | batched | 2.00 | 4.00 | 0.060 | 0.080 |" in table
    assert "900 MB one by one, 6000 MB batched" in table
    cpu = report.batch_table({**batch, "gpu": None, "threads": 2})
    assert "on cuda, 2 threads" in cpu
