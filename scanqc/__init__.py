"""scanqc: QC verdicts for clinical-trial CT and MRI within a second of the series arriving.

One path serves every front end (CLI, HTTP service, DICOM receiver)::

    read -> canonical volume -> checks -> verdict

See :func:`scanqc.pipeline.check_paths` and :func:`scanqc.pipeline.check_series`.
"""

__version__ = "0.1.0"
