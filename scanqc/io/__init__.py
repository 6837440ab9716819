"""Readers: files, folders and archives in; :class:`scanqc.series.Series` out."""
