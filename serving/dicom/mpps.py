"""Modality Performed Procedure Step (N-CREATE / N-SET): a completed step completes its series.

Each step belongs to the site whose AE created it; another site's AE cannot see or change it. Only the
statuses and the series it lists (``PerformedSeriesSequence``, else the scheduled studies) reach the tracker.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityPerformedProcedureStep
from scanqc.serving.dicom.common import (
    DUPLICATE_INSTANCE,
    MISSING_ATTRIBUTE,
    NO_SUCH_OBJECT,
    SUCCESS,
    _generate_uid,
    _valid_uid,
)

log = logging.getLogger("scanqc.receiver")

_FINAL_MPPS = ("COMPLETED", "DISCONTINUED")
_MAX_MPPS = 1000  # open MPPS instances kept in memory; oldest dropped first


class MppsTable:
    """Open MPPS instances (bounded, oldest dropped first), keyed by SOP Instance UID."""

    def __init__(self, on_completed: Any) -> None:
        """``on_completed(site, series_refs, studies)``: ``SeriesTracker.mpps_completed``."""
        self.on_completed = on_completed
        self._lock = threading.Lock()
        self._steps: OrderedDict[str, tuple[str, Dataset]] = OrderedDict()  # uid -> (creating site, dataset)

    def create(self, site: str, requested_uid: object, attrs: Dataset, ae: str) -> tuple[int, Dataset | None]:
        uid = _valid_uid(requested_uid) or _generate_uid()
        if "PerformedProcedureStepStatus" not in attrs:
            return MISSING_ATTRIBUTE, None
        with self._lock:
            if uid in self._steps:
                return DUPLICATE_INSTANCE, None
            ds = Dataset()
            ds.SOPClassUID = ModalityPerformedProcedureStep
            ds.SOPInstanceUID = uid
            ds.update(attrs)
            self._steps[uid] = (site, ds)
            while len(self._steps) > _MAX_MPPS:
                self._steps.popitem(last=False)
        log.info("MPPS %s created by %s: %s", uid, ae, attrs.PerformedProcedureStepStatus)
        self._update(site, ds)
        return SUCCESS, ds

    def set(self, site: str, uid: str, modifications: Dataset, ae: str) -> tuple[int, Dataset | None]:
        with self._lock:
            entry = self._steps.get(uid)
            if entry is None or entry[0] != site:  # another site's step does not exist for this sender
                return NO_SUCH_OBJECT, None
            ds = entry[1]
            ds.update(modifications)
        log.info("MPPS %s set by %s: %s", uid, ae, ds.get("PerformedProcedureStepStatus"))
        self._update(site, ds)
        return SUCCESS, ds

    def _update(self, site: str, ds: Dataset) -> None:
        """COMPLETED/DISCONTINUED: the listed series (or, if none listed, the study's) of ``site`` are done."""
        if str(ds.get("PerformedProcedureStepStatus", "")).upper() not in _FINAL_MPPS:
            return
        series_refs: dict[str, set[str] | None] = {}
        for item in ds.get("PerformedSeriesSequence", []) or []:
            s = _valid_uid(item.get("SeriesInstanceUID"))
            if not s:
                continue
            sops = {str(r.ReferencedSOPInstanceUID) for r in item.get("ReferencedImageSequence", []) or []
                    if "ReferencedSOPInstanceUID" in r}
            series_refs[s] = sops or None
        scheduled = ds.get("ScheduledStepAttributesSequence", []) or []
        studies = {u for u in (_valid_uid(i.get("StudyInstanceUID")) for i in scheduled) if u}
        self.on_completed(site, series_refs, studies)
