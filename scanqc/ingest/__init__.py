"""Streaming ingest: build series instance by instance and decide when a series is complete.

- :mod:`scanqc.ingest.assembler`: ``SeriesAssembler.add(ds, file)`` (decode one instance now; the rescale into
  the volume follows in the conversion thread) /
  ``.stack()`` (slices, gaps, duplicates so far) / ``.finish() -> Series`` (what ``load_series`` builds from
  the same files; ``load_series`` is itself a loop over ``add``).
- :mod:`scanqc.ingest.completion`: the completion signals (MPPS, expected count, quiet period, restart:
  final; association release, geometry, adaptive quiet period: provisional), ``decide(progress, now, policy)``.
- :mod:`scanqc.ingest.tracker`: ``SeriesTracker``, pending series keyed by (site, study, series), one
  assembler each, the completion loop and check workers. A front end calls ``tracker.add(key, sop, ds, file,
  station=..., folder=..., assoc=...)`` per instance (``released(assoc)`` / ``mpps_completed(...)`` when it
  has those signals) and gets ``on_check(folder, SeriesArrival)`` with the assembled series; the DICOM
  receiver is one such front end, a watched folder can be another (pass ``assoc=None``; without releases
  the geometry and quiet-period signals decide).
- :mod:`scanqc.ingest.watch`: ``FolderWatcher``, the mobile unit's watched folder (``scanqc unit watch``).

Base tier: imports pydicom and numpy only (no pynetdicom, no server, no torch).
"""

from scanqc.ingest.assembler import SeriesAssembler, StackState
from scanqc.ingest.completion import CompletionPolicy, Decision, decide
from scanqc.ingest.tracker import SeriesArrival, SeriesKey, SeriesTracker

__all__ = ["CompletionPolicy", "Decision", "SeriesArrival", "SeriesAssembler", "SeriesKey", "SeriesTracker",
           "StackState", "decide"]
