# SPDX-License-Identifier: Apache-2.0
"""Test and benchmark data made from installed packages, never downloaded.

- `niaffine.data.templates`: the MNI152 2009a symmetric template shipped by nilearn
  (T1, GM, WM, brain mask).
- `niaffine.data.synthetic`: registration cases with a known world-space affine
  (`make_case`), contrasts, scalp, bias, noise, and displacement errors in mm.
- `niaffine.data.geometry`: random affines, grids and resampling (numpy/scipy only,
  independent of `niaffine.engine`).
"""
