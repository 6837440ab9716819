"""DICOM receiver: a pynetdicom storage SCP that turns pushed series into verdicts.

Modules: :mod:`.scp` (storage SCP, durable writes, restart recovery), :mod:`.mpps` (MPPS N-CREATE/N-SET),
:mod:`.config` (``ReceiverConfig``), :mod:`.wiring` (the service's callbacks, verdict SRs, stand-alone mode);
completion and incremental assembly live in :mod:`scanqc.ingest`, shared with the watched folder.

Scanners C-STORE instances; each one is written durably (temp file, fsync, atomic rename, directory
fsync) to ``<data_dir>/incoming/<site>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` *before* the
success status goes back, so nothing acknowledged can be lost; the same dataset is then decoded into the
series' assembler (:mod:`scanqc.ingest`), so a complete series needs only its model checks. Pending series
are keyed by (site, study, series). When a completion signal fires (:mod:`scanqc.ingest.completion`: MPPS
from the sender's site, expected count, geometry, association release, adaptive or configured quiet
period) ``on_series_complete(folder, meta)`` runs with the assembled ``meta.series``; provisional verdicts
are confirmed through ``on_series_final`` or replaced. After the final verdict a ``.verdict`` marker lists
the files it saw. On start, series folders whose files are not all covered by a marker are queued again.

Logs carry UIDs and AE titles only, never patient attributes. See docs/dicom.md.
"""

from scanqc.serving.dicom.config import ReceiverConfig
from scanqc.serving.dicom.scp import Receiver
from scanqc.serving.dicom.wiring import make_receiver, publish_sr, run_receiver, sr_path

from scanqc.ingest.tracker import SeriesArrival

__all__ = ["Receiver", "ReceiverConfig", "SeriesArrival", "make_receiver", "publish_sr", "run_receiver", "sr_path"]
