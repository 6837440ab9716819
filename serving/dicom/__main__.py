"""``python -m scanqc.serving.dicom --data-dir D``: the receiver without the HTTP service (debugging)."""

from scanqc.serving.dicom.wiring import main

main()
