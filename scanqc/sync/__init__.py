"""Mobile imaging units: the laptop's offline outbox and its sync to the central service (docs/mobile.md).

Base install tier: stdlib (``sqlite3``, ``urllib``) plus scanqc core only; no bentoml, sqlalchemy,
pynetdicom, torch or monai on this import path (``tests/test_import_tiers.py``).
"""
