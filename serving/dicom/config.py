"""The DICOM receiver's configuration, mapped from the service's Settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanqc.ingest.completion import CompletionPolicy
from scanqc.ingest.tracker import SeriesArrival


@dataclass
class ReceiverConfig:
    """What the receiver needs; build it from the service's Settings with :meth:`from_settings`."""

    data_dir: Path
    port: int = 11112
    ae_title: str = "SCANQC"
    quiet_period_s: float = 5.0
    ae_sites: Mapping[str, str] = field(default_factory=dict)  # calling AE title -> site id
    host: str = "0.0.0.0"
    # Accept calling AEs missing from ae_sites (filed under default_site). Default: only when
    # ae_sites is empty, i.e. the demo config; a configured deployment rejects strangers.
    accept_unknown_ae: bool | None = None
    default_site: str = "default"
    tcp_nodelay: bool = True  # TCP_NODELAY on accepted sockets + TCP_QUICKACK after each PDU (Linux)
    max_pdu: int = 0  # 0 = unlimited: fewer, larger P-DATA PDUs from the sender
    workers: int = 1  # series checked concurrently
    retries: int = 2  # extra attempts when on_series_complete raises
    retry_delay_s: float = 5.0
    sr_destination: str | None = None  # "AE@host:port": C-STORE the verdict SR there (off by default)
    max_instances: int = 5000  # per series: more are refused (bounded disk and tracker memory)
    adaptive: bool = True  # provisional verdicts from the fast signals (release, geometry, adaptive quiet)
    min_quiet_s: float = 0.2  # the adaptive quiet period's floor

    def policy(self) -> CompletionPolicy:
        return CompletionPolicy(self.quiet_period_s, adaptive=self.adaptive, min_quiet_s=self.min_quiet_s)

    @property
    def accepts_any(self) -> bool:
        return (not self.ae_sites) if self.accept_unknown_ae is None else self.accept_unknown_ae

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ReceiverConfig:
        """Map ``scanqc.serving.config.Settings`` (or anything with the same attribute names)."""
        if isinstance(settings, ReceiverConfig):
            return cls(**{**settings.__dict__, **overrides})
        kw: dict[str, Any] = dict(
            data_dir=Path(settings.data_dir), port=int(settings.dicom_port),
            ae_title=str(settings.dicom_ae_title), quiet_period_s=float(settings.quiet_period_s),
            ae_sites=dict(getattr(settings, "ae_sites", {}) or {}),
        )
        for attr, name in (("dicom_host", "host"), ("dicom_accept_unknown_ae", "accept_unknown_ae"),
                           ("default_site", "default_site"), ("dicom_tcp_nodelay", "tcp_nodelay"),
                           ("dicom_workers", "workers"), ("dicom_sr_destination", "sr_destination"),
                           ("max_instances", "max_instances"), ("dicom_adaptive", "adaptive"),
                           ("dicom_min_quiet_s", "min_quiet_s")):
            if getattr(settings, attr, None) is not None:
                kw[name] = getattr(settings, attr)
        kw.update(overrides)
        return cls(**kw)


OnSeriesComplete = Callable[[Path, SeriesArrival], Any]


OnSeriesComplete = Callable[[Path, SeriesArrival], Any]
