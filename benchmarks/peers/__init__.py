# SPDX-License-Identifier: Apache-2.0
"""The registration tools under comparison, one runner each (see `benchmarks.tools`).

- `benchmarks.peers.common`: conversions of every tool's output to a world matrix (pure numpy)
  and the NIfTI files the tools read.
- `benchmarks.peers.inprocess`: tools called from Python (niaffine, ANTsPy, torchreg, elastix).
- `benchmarks.peers.commands`: command-line tools (NiftyReg ``reg_aladin``, MRtrix3 ``mrregister``).
"""
