"""Service settings: defaults < optional YAML file < ``SCANQC_*`` environment variables.

The defaults are the embedded single-machine setup: SQLite under ``./scanqc-data``, HTTP and DICOM on
loopback. A deployment sets ``SCANQC_DB_URL`` (PostgreSQL shared by replicas), ``SCANQC_SALT`` and a
YAML file mapping calling AE titles to sites and studies to acquisition guidelines.

Example YAML::

    db_url: postgresql+psycopg://scanqc@db/scanqc
    salt: change-me-per-deployment
    ae_sites: {CT_SITE01: site01, MR_SITE02: site02}
    studies: {ONC-001: abdomen_ct, NEURO-7: /etc/scanqc/neuro7.yaml}
    site_studies: {site01: ONC-001, site02: NEURO-7}
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.limits import Limits

ENV_PREFIX = "SCANQC_"
CONFIG_ENV = "SCANQC_CONFIG"
_DEFAULT_SALT = "scanqc-default-salt-change-me"
AUTH_MODES = ("auto", "required", "off")


@dataclass
class Settings:
    data_dir: Path = Path("./scanqc-data")
    db_url: str = ""  # empty: sqlite:///<data_dir>/scanqc.db
    http_host: str = "127.0.0.1"
    http_port: int = 3000
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_ae_title: str = "SCANQC"
    dicom_enabled: bool = True
    quiet_period_s: float = 5.0  # a series is complete after this long without a new instance (upper bound)
    # Provisional verdicts from the fast DICOM completion signals (association release, geometry, adaptive
    # quiet period; docs/dicom.md); off = only MPPS, expected count and the quiet period complete a series.
    dicom_adaptive: bool = True
    dicom_min_quiet_s: float = 0.2  # the adaptive quiet period's floor
    ae_sites: dict[str, str] = field(default_factory=dict)  # calling AE title -> site id
    studies: dict[str, str] = field(default_factory=dict)  # study id -> guideline file or shipped name
    site_studies: dict[str, str] = field(default_factory=dict)  # site id -> default study id
    default_study: str | None = None  # when neither request nor site names one
    default_site: str = "unassigned"  # uploads and associations from unknown senders
    salt: str = _DEFAULT_SALT  # per-deployment secret for hashing patient identifiers
    workers: int = 1  # BentoML API workers; keep 1 on SQLite
    concurrency: int = 4  # series checked at once per worker (HTTP) and by the DICOM receiver
    # HTTP checks one site may run at once (0: concurrency - 1, at least 1), so one site's burst of slow
    # uploads always leaves a check thread to the other sites (scanqc.serving.pool.FairPool).
    site_concurrency: int = 0
    max_batch_size: int = 16
    max_latency_ms: int = 1000
    keep_uploads: bool = True  # keep received files under data_dir/incoming after the verdict
    # -- security and limits (docs/security.md) --
    # auth: "auto" = required once any API token exists or when HTTP is bound beyond loopback; "required";
    # "off" (refused beyond loopback: the embedded demo only).
    auth: str = "auto"
    max_upload_bytes: int = 2 * 1024**3  # HTTP request body, enforced while streaming (413 TOO_LARGE)
    max_instances: int = 5000  # instances per series
    max_voxels: int = 600_000_000  # voxels per series volume
    max_archive_members: int = 20_000  # zip members of one upload, all its archives together
    max_archive_bytes: int = 4 * 1024**3  # zip uncompressed total of one upload, all its archives together
    # an upload's check taking longer is stopped and answers 504 CHECK_TIMEOUT (the upload is kept, its error
    # verdict stored); also the limit for uploads checked again after a restart
    check_timeout_s: float = 120.0
    request_idle_timeout_s: float = 30.0  # no request-body bytes for this long: 408 REQUEST_TIMEOUT
    # -- mobile units (docs/mobile.md) --
    sync_recheck: bool = False  # re-check synced series with the central models; disagreements are flagged
    unit_stale_hours: float = 24.0  # the dashboard flags a unit that has not synced for this long

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.db_url:
            self.db_url = f"sqlite:///{(self.data_dir / 'scanqc.db').resolve()}"

    # -- resolution helpers used by the service and the receiver ---------------------------------
    def site_for_ae(self, calling_ae: str | None) -> str:
        ae = (calling_ae or "").strip()
        return self.ae_sites.get(ae, self.default_site)

    def study_for(self, site_id: str | None, study_id: str | None = None) -> str | None:
        if study_id:
            return study_id
        if site_id and site_id in self.site_studies:
            return self.site_studies[site_id]
        return self.default_study

    def guideline_ref(self, study_id: str | None) -> str | None:
        """Guideline file/name of a configured study; an unconfigured id may name a shipped guideline
        (``abdomen_ct``...), never a file: study ids arrive in requests. None when neither."""
        if not study_id:
            return None
        if study_id in self.studies:
            return self.studies[study_id]
        from scanqc.guideline import shipped_guideline_path

        return study_id if shipped_guideline_path(study_id) is not None else None

    @property
    def checks_per_site(self) -> int:
        """HTTP checks one site may run at once (``site_concurrency``; 0 = all threads but one)."""
        n = max(1, self.concurrency)
        return max(1, min(self.site_concurrency, n)) if self.site_concurrency > 0 else max(1, n - 1)

    def hash_identifier(self, value: object) -> str | None:
        """Keyed hash (HMAC-SHA256) of a patient identifier; never store or log the clear value."""
        if value is None or str(value).strip() == "":
            return None
        return hmac.new(self.salt.encode(), str(value).strip().encode(), hashlib.sha256).hexdigest()[:32]

    def limits(self) -> Limits:
        """Ingest limits for this deployment (``scanqc.limits.Limits``)."""
        return dataclasses.replace(
            Limits.from_env(), max_instances=self.max_instances, max_voxels=self.max_voxels,
            max_archive_members=self.max_archive_members, max_archive_bytes=self.max_archive_bytes)

    @property
    def loopback_only(self) -> bool:
        return self.http_host in ("127.0.0.1", "localhost", "::1")

    @property
    def default_salt(self) -> bool:
        return self.salt == _DEFAULT_SALT

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / "incoming"

    def public(self) -> dict[str, Any]:
        """Settings safe to show (no salt, no DB password)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "salt"}
        d["data_dir"] = str(self.data_dir)
        d["db_url"] = _redact_url(self.db_url)
        return d

    def to_env(self) -> dict[str, str]:
        """Environment that reproduces these settings in a child process (the BentoML server)."""
        out: dict[str, str] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[ENV_PREFIX + f.name.upper()] = json.dumps(v) if isinstance(v, dict) else str(v)
        return out


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def _coerce(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, dict):
            value = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return {str(k): str(v) for k, v in value.items()}
        if isinstance(default, Path):
            return Path(str(raw))
        return None if raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        raise ScanQCError(ErrorCode.USAGE, f"setting {name}={raw!r} is invalid ({exc})") from None


def _register_guideline_files(settings: Settings) -> None:
    """``default_study`` / ``site_studies`` naming a guideline file (``scanqc serve --study my.yaml``) is the
    operator's configuration: register the path as a study of that id. Ids sent in requests never name
    files (``Settings.guideline_ref``)."""
    from scanqc.guideline import shipped_guideline_path

    for sid in [settings.default_study, *settings.site_studies.values()]:
        if sid and sid not in settings.studies and shipped_guideline_path(sid) is None and Path(sid).is_file():
            settings.studies[sid] = sid


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the YAML file (``path`` or ``$SCANQC_CONFIG``), ``SCANQC_*`` env, overrides."""
    defaults = Settings(db_url="unset")
    values: dict[str, Any] = {}
    path = path or os.environ.get(CONFIG_ENV)
    names = {f.name for f in fields(Settings)}
    if path:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except OSError as exc:
            raise ScanQCError(ErrorCode.USAGE, f"{path}: cannot read settings ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ScanQCError(ErrorCode.USAGE, f"{path}: settings file is not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ScanQCError(ErrorCode.USAGE, f"{path}: settings file must be a mapping")
        unknown = set(data) - names
        if unknown:
            raise ScanQCError(ErrorCode.USAGE, f"{path}: unknown setting(s) {sorted(unknown)}")
        values.update(data)
    for name in names:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None and env != "":
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    kwargs: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name in values:
            default = getattr(defaults, f.name)
            if f.name == "default_study":
                kwargs[f.name] = values[f.name] or None
            else:
                kwargs[f.name] = _coerce(f.name, values[f.name], default)
    settings = Settings(**kwargs)
    _register_guideline_files(settings)
    if settings.auth not in AUTH_MODES:
        raise ScanQCError(ErrorCode.USAGE, f"setting auth={settings.auth!r} must be one of {list(AUTH_MODES)}")
    if settings.auth == "off" and not settings.loopback_only:
        raise ScanQCError(ErrorCode.USAGE, f"auth=off is only allowed on loopback, not http_host={settings.http_host}")
    return settings
