# SPDX-License-Identifier: Apache-2.0
"""Binary-mask clean-up shared by the engine, the interfaces and the test data (numpy, scipy)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary mask, its enclosed holes filled.

    Parameters
    ----------
    mask : (I, J, K) array
        Nonzero where the object is.

    Returns
    -------
    (I, J, K) bool array

    Examples
    --------
    >>> m = np.zeros((7, 7, 7), bool); m[1:6, 1:6, 1:6] = True; m[3, 3, 3] = False
    >>> m[0, 0, 0] = True  # a speck
    >>> int(largest_component(m).sum())
    125
    """
    mask = np.asarray(mask) != 0
    labels, n_labels = ndi.label(mask)
    if n_labels > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndi.binary_fill_holes(mask)
