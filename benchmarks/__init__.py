# SPDX-License-Identifier: Apache-2.0
"""Benchmarks of niaffine against ANTsPy and torchreg.

Run: ``python -m benchmarks.run_benchmarks --help``.
"""
