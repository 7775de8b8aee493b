# SPDX-License-Identifier: Apache-2.0
"""Small simulated series shared by the engine, CLI, interface and workflow tests.

Rendered from the MNI anatomy at 2 mm onto 4 mm grids (``source_mm=2``): about two seconds to
make, a few seconds to realign on one CPU thread. Cached per process; callers get the same
objects, so they must not modify them.
"""

from __future__ import annotations

from functools import lru_cache

import nibabel as nib
import numpy as np

from niaffine.data import series as S

#: Realignment settings of the quick tests (4 mm voxels: two levels are plenty).
QUICK = {"levels": (2.0, 1.0)}


@lru_cache(maxsize=2)
def bold(n_volumes: int = 6, seed: int = 7) -> S.SeriesCase:
    """A 4 mm BOLD run (LAS, oblique) with one jump of 2-3 mm / 2-3 degrees."""
    return S.make_bold_series(np.random.default_rng(seed), n_volumes=n_volumes, voxel_size=4.0,
                              source_mm=2, motion={"jumps": 1})


@lru_cache(maxsize=1)
def dwi(seed: int = 7) -> S.SeriesCase:
    """A 4 mm DWI: two b=0 and six b=1000 volumes, eddy currents along j."""
    return S.make_dwi_series(np.random.default_rng(seed), n_b0=2, directions=6, voxel_size=4.0,
                             source_mm=2)


def save_case(case: S.SeriesCase, folder, stem: str = "series") -> dict:
    """Write a case's series (and b-values/b-vectors) as files; return their paths."""
    from niaffine.series_io import write_bvals, write_bvecs

    paths = {"series": str(folder / f"{stem}.nii.gz")}
    nib.save(case.series, paths["series"])
    if case.bvals is not None:
        paths["bval"] = str(write_bvals(case.bvals, folder / f"{stem}.bval"))
        paths["bvec"] = str(write_bvecs(case.bvecs, folder / f"{stem}.bvec"))
    return paths
