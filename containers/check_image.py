# SPDX-License-Identifier: Apache-2.0
"""Build-time check of the niaffine image: everything the app reads at run time is inside it.

Run by the Dockerfile's build stage (``python /src/containers/check_image.py``) and usable in a
built image (``--entrypoint python IMAGE -``, script on stdin): the deepbet weights, the packaged
MNI152 template files, and torch's view of CUDA. Exits non-zero if something is missing.
"""

import importlib.util
import logging
import sys
from pathlib import Path

LOGGER = logging.getLogger("niaffine.check_image")


def main() -> int:
    """Check the image; return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from niaffine import __version__
    from niaffine.data.templates import TEMPLATE_KINDS, template_path

    site = Path(importlib.util.find_spec("deepbet").origin).parents[1]
    weights = sorted((site / "data" / "models").glob("*.pt"))
    if not weights:
        LOGGER.error("deepbet weights not found under %s/data/models", site)
        return 1
    missing = [kind for kind in TEMPLATE_KINDS if not Path(template_path(kind)).is_file()]
    if missing:
        LOGGER.error("template files missing: %s", ", ".join(missing))
        return 1
    LOGGER.info(
        "niaffine %s; torch %s (CUDA build: %s)", __version__, torch.__version__, torch.version.cuda
    )
    LOGGER.info("deepbet weights: %s", ", ".join(w.name for w in weights))
    LOGGER.info("templates: %s", template_path("t1").parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
