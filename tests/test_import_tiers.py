"""Dependency tiers (docs/architecture.md): the base install (the scanner side and the mobile unit's laptop) runs
`scanqc check`, `scanqc unit ...` and `scanqc sync` with torch, monai, bentoml, sqlalchemy and pynetdicom all
unimportable, and imports none of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SERVER_AND_TRAINING = ("torch", "monai", "torchio", "bentoml", "sqlalchemy", "alembic", "pynetdicom")

BLOCKED_RUN = """
import sys
BLOCKED = {blocked!r}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{{name}} is blocked: the base tier must not import it')
sys.meta_path.insert(0, _Block())
from scanqc.cli import main
sys.argv = ['scanqc'] + sys.argv[1:]
try:
    main()
finally:
    leaked = sorted({{m.split('.')[0] for m in sys.modules}} & set(BLOCKED))
    assert not leaked, f'imported: {{leaked}}'
"""


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED_RUN.format(blocked=SERVER_AND_TRAINING))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).parent), env={**os.environ, **(env or {})})


def _clean(r: subprocess.CompletedProcess) -> None:
    assert "is blocked" not in r.stderr and "imported:" not in r.stderr, r.stderr[-2000:]


def test_core_and_sync_modules_import_no_server_or_training_dependency() -> None:
    modules = ("scanqc.cli, scanqc.pipeline, scanqc.sync.client, scanqc.sync.outbox, scanqc.sync.cli, "
               "scanqc.ingest.watch, scanqc.io.durable")
    code = (f"import sys; import {modules}; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_AND_TRAINING!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_check_runs_with_server_and_training_dependencies_unimportable(write_series, tmp_path, modality):
    folder = write_series("s", modality, shape=(8, 32, 32))
    r = _run(tmp_path, "check", str(folder), "--json")
    _clean(r)
    (o,) = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert o["status"] in ("pass", "warn", "fail") and r.returncode in (0, 1)


def test_unit_check_and_sync_run_in_the_base_tier(write_series, tmp_path):
    folder = write_series("s", shape=(8, 32, 32))
    env = {"SCANQC_UNIT_DIR": str(tmp_path / "unit")}
    _clean(r := _run(tmp_path, "unit", "init", "--unit", "VAN1", "--server", "http://127.0.0.1:9", env=env))
    assert r.returncode == 0, r.stderr
    _clean(r := _run(tmp_path, "unit", "check", str(folder), "--json", env=env))
    assert r.returncode in (0, 1) and json.loads(r.stdout)["outbox_key"]
    _clean(r := _run(tmp_path, "sync", "--retries", "1", env=env))
    assert r.returncode == 2 and "SYNC_UNREACHABLE" in r.stderr  # nothing listens there; the path is torch-free
