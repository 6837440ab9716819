"""Checks: each takes a :class:`~scanqc.series.Series` and a context, returns a CheckResult."""
