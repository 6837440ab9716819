"""Streaming ingest: build series instance by instance and decide when a series is complete.

- :mod:`scanqc.ingest.assembler`: ``SeriesAssembler.add(ds, file)`` / ``.stack()`` / ``.finish() -> Series``.
- :mod:`scanqc.ingest.completion`: the completion signals (MPPS, expected count, geometry, association
  release, adaptive and configured quiet period) and which of them is final.
- :mod:`scanqc.ingest.tracker`: ``SeriesTracker``, pending series keyed by (site, study, series), one
  assembler each; the DICOM receiver and a watched folder both drive it.

Base tier: imports pydicom and numpy only (no pynetdicom, no server, no torch).
"""

from scanqc.ingest.assembler import SeriesAssembler, StackState

__all__ = ["SeriesAssembler", "StackState"]
