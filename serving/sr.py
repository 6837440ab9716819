"""The verdict as a DICOM Comprehensive SR (highdicom), for PACS/modality-side viewers.

The SR joins the checked study (patient and study modules copied from the reference header, so a
site sending pseudonyms gets pseudonyms back) as a new series "scanqc QC verdict". Content tree::

    CONTAINER  (99SCANQC, QCVERDICT) "scanqc QC verdict"
      TEXT     (DCM, 111001) Algorithm Name = "scanqc"
      TEXT     (DCM, 111003) Algorithm Version
      UIDREF   (DCM, 112002) Series Instance UID = checked series
      TEXT     (99SCANQC, QCSTATUS) "QC status" = pass | warn | fail | error
      TEXT     (99SCANQC, QCACTION) "Technologist action"            (one per action, fail first)
      TEXT     (99SCANQC, QCERROR) "Error"                            (error verdicts only)
      CONTAINER (99SCANQC, QCCHECK) "QC check"                        (one per check)
        TEXT   (99SCANQC, QCCHECKNAME) "Check name"
        TEXT   (99SCANQC, QCSTATUS) "QC status"
        NUM    (99SCANQC, QCSCORE) "Problem probability" [UCUM 1]     (when the check has a score)
        TEXT   (99SCANQC, QCMESSAGE) "Message"
        TEXT   (99SCANQC, QCACTION) "Technologist action"             (when the check has one)

:func:`sr_summary` reads that tree back into a dict (tests, scanner-side scripts).
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from pathlib import Path
from typing import Any

import highdicom.sr as hsr
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

log = logging.getLogger("scanqc.sr")

SCHEME = "99SCANQC"
SERIES_DESCRIPTION = "scanqc QC verdict"
SERIES_NUMBER = 9901  # high, so viewers list it after the acquired series


def _c(value: str, meaning: str, scheme: str = SCHEME) -> CodedConcept:
    return CodedConcept(value, scheme, meaning)


TITLE = _c("QCVERDICT", "scanqc QC verdict")
ALGORITHM_NAME = _c("111001", "Algorithm Name", "DCM")
ALGORITHM_VERSION = _c("111003", "Algorithm Version", "DCM")
SERIES_UID = _c("112002", "Series Instance UID", "DCM")
STATUS = _c("QCSTATUS", "QC status")
ACTION = _c("QCACTION", "Technologist action")
ERROR = _c("QCERROR", "Error")
CHECK = _c("QCCHECK", "QC check")
CHECK_NAME = _c("QCCHECKNAME", "Check name")
SCORE = _c("QCSCORE", "Problem probability")
MESSAGE = _c("QCMESSAGE", "Message")
NO_UNITS = _c("1", "no units", "UCUM")

_CONTAINS = hsr.RelationshipTypeValues.CONTAINS

# highdicom reads these type-2 attributes from the evidence and fails if one is absent.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")
# Copied as-is when the reference has them (patient, clinical trial subject/study, de-identification).
_COPY = ("IssuerOfPatientID", "OtherPatientIDsSequence", "PatientBirthTime", "PatientIdentityRemoved",
         "DeidentificationMethod", "DeidentificationMethodCodeSequence", "PatientAge", "PatientSize",
         "PatientWeight", "StudyDescription", "ClinicalTrialSponsorName", "ClinicalTrialProtocolID",
         "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID",
         "ClinicalTrialSubjectReadingID", "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
         "ClinicalTrialCoordinatingCenterName")


def _text(name: CodedConcept, value: object) -> hsr.TextContentItem:
    return hsr.TextContentItem(name, str(value) or "-", relationship_type=_CONTAINS)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("scanqc")
    except Exception:
        return "unknown"


def verdict_to_sr(verdict: dict[str, Any], reference: Dataset, *, series_instance_uid: str | None = None,
                  manufacturer: str = "scanqc") -> Dataset:
    """A Comprehensive SR of ``verdict`` (``Verdict.to_dict()`` shape) in the study of ``reference``.

    ``reference`` is any instance header of the checked series (pixel data not needed). Pass the same
    ``series_instance_uid`` for re-checks of one series to keep their SRs in one SR series.
    """
    items: list[Any] = [_text(ALGORITHM_NAME, "scanqc"), _text(ALGORITHM_VERSION, _version())]
    series_uid = verdict.get("series_uid") or reference.get("SeriesInstanceUID")
    if series_uid:
        items.append(hsr.UIDRefContentItem(SERIES_UID, str(series_uid), relationship_type=_CONTAINS))
    items.append(_text(STATUS, verdict.get("status", "error")))
    for action in verdict.get("actions") or []:
        items.append(_text(ACTION, action))
    if verdict.get("error"):
        err = verdict["error"]
        items.append(_text(ERROR, f"{err.get('code', '')}: {err.get('message', '')}"))
    for name, check in (verdict.get("checks") or {}).items():
        sub: list[Any] = [_text(CHECK_NAME, name), _text(STATUS, check.get("status", ""))]
        if check.get("score") is not None:
            sub.append(hsr.NumContentItem(SCORE, float(check["score"]), NO_UNITS, relationship_type=_CONTAINS))
        sub.append(_text(MESSAGE, check.get("message") or "-"))
        if check.get("action"):
            sub.append(_text(ACTION, check["action"]))
        box = hsr.ContainerContentItem(CHECK, relationship_type=_CONTAINS)
        box.ContentSequence = hsr.ContentSequence(sub)
        items.append(box)
    root = hsr.ContainerContentItem(TITLE)
    root.ContentSequence = hsr.ContentSequence(items)

    evidence = Dataset()  # header only: never deep-copy pixel data
    for elem in reference:
        if elem.keyword != "PixelData":
            evidence.add(elem)
    for kw in _TYPE2:
        if kw not in evidence:
            setattr(evidence, kw, "")
    with warnings.catch_warnings():
        # The patient name is the site's (often a one-component pseudonym); copy it, don't lecture.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        sr = hsr.ComprehensiveSR(
            evidence=[evidence], content=root,
            series_instance_uid=series_instance_uid or sr_series_uid(str(series_uid or "")),
            series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer=manufacturer, is_complete=True, is_final=True, is_verified=False,
            series_description=SERIES_DESCRIPTION,
        )
    for kw in _COPY:
        if kw in reference:
            sr[kw] = reference[kw]
    now = dt.datetime.now()
    sr.ContentDate, sr.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return sr


def sr_series_uid(checked_series_uid: str) -> str:
    """One SR series per checked series, stable across re-checks and restarts."""
    return str(generate_uid(entropy_srcs=[checked_series_uid, "scanqc-sr"]))


def write_sr(sr: Dataset, path: Path) -> Path:
    """Save durably (atomic rename) so a reader never sees half a file."""
    import io

    from scanqc.io.durable import atomic_write

    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    return path


def parse_destination(dest: str) -> tuple[str, str, int]:
    """``"AE@host:port"`` -> (ae_title, host, port)."""
    ae, _, addr = dest.partition("@")
    host, _, port = addr.rpartition(":")
    if not (ae and host and port.isdigit()):
        raise ValueError(f"SR destination must look like AE@host:port, got {dest!r}")
    return ae, host, int(port)


def send_sr(sr: Dataset, destination: str, calling_ae: str = "SCANQC", timeout_s: float = 10.0) -> int:
    """C-STORE the SR to ``"AE@host:port"``; returns the DIMSE status (raises on no association)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage
    from scanqc.serving.dicom.scp import _set_nodelay

    ae_title, host, port = parse_destination(destination)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(ComprehensiveSRStorage, str(sr.file_meta.TransferSyntaxUID))
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay)])
    if not assoc.is_established:
        raise ConnectionError(f"SR destination {ae_title}@{host}:{port} refused or unreachable")
    try:
        status = assoc.send_c_store(sr)
        code = int(status.Status) if status and "Status" in status else 0xFFFF
    finally:
        assoc.release()
    log.info("SR %s sent to %s@%s:%d: status 0x%04X", sr.SOPInstanceUID, ae_title, host, port, code)
    return code


def sr_summary(ds: Dataset) -> dict[str, Any]:
    """Read an SR written by :func:`verdict_to_sr` back into ``{status, series_uid, actions, checks}``."""
    out: dict[str, Any] = {"status": None, "series_uid": None, "actions": [], "error": None, "checks": {}}
    for item in ds.ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if code == "QCSTATUS":
            out["status"] = item.TextValue
        elif code == "112002":
            out["series_uid"] = str(item.UID)
        elif code == "QCACTION":
            out["actions"].append(item.TextValue)
        elif code == "QCERROR":
            out["error"] = item.TextValue
        elif code == "QCCHECK":
            check: dict[str, Any] = {"score": None, "action": None}
            for sub in item.ContentSequence:
                sc = sub.ConceptNameCodeSequence[0].CodeValue
                if sc == "QCSCORE":
                    check["score"] = float(sub.MeasuredValueSequence[0].NumericValue)
                else:
                    key = {"QCCHECKNAME": "name", "QCSTATUS": "status", "QCMESSAGE": "message",
                           "QCACTION": "action"}.get(sc)
                    if key:
                        check[key] = sub.TextValue
            out["checks"][check.pop("name")] = check
    return out
