"""Longer fuzz runs than the test suite's: DICOM/NIfTI ingest (tests/fuzz) and the HTTP upload/JSON endpoints
(tests/reliability/test_http_fuzz.py), with hypothesis' example counts raised.

    .venv/bin/python -m scanqc.evaluation.fuzz --examples 500 --http-examples 300 --out /tmp/fuzz

Every example must end in a verdict or a coded error (ingest) / a coded 4xx (HTTP): no crash, no
``INTERNAL``, no 500, nothing over the per-example time limit. Writes ``fuzz.json`` and ``fuzz.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(examples: int, http_examples: int, out: Path) -> dict:
    env = {**os.environ, "SCANQC_FUZZ_EXAMPLES": str(examples), "SCANQC_HTTP_FUZZ_EXAMPLES": str(http_examples),
           "BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
           "--timeout", "3600", "tests/fuzz/test_fuzz_ingest.py", "tests/reliability/test_http_fuzz.py"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    text = proc.stdout + proc.stderr
    (out / "fuzz.log").write_text(text)
    tests: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^(tests/\S+::\S+):", line.strip())
        if m:
            current = m.group(1)
            tests[current] = {"passing": 0, "failing": 0, "invalid": 0}
            continue
        m = re.search(r"(\d+) passing, (\d+) failing, and (\d+) invalid", line)
        if m and current:
            for k, v in zip(("passing", "failing", "invalid"), m.groups()):
                tests[current][k] += int(v)
    summary = re.findall(r"(\d+) (passed|failed|error|xfailed|xpassed)", text)
    return {"examples_setting": examples, "http_examples_setting": http_examples, "wall_s": round(wall, 1),
            "exit_code": proc.returncode, "pytest": {k: int(v) for v, k in summary}, "tests": tests,
            "total_passing_examples": sum(t["passing"] for t in tests.values()),
            "total_failing_examples": sum(t["failing"] for t in tests.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=500, help="per ingest fuzz test")
    ap.add_argument("--http-examples", type=int, default=300, help="per HTTP fuzz test")
    ap.add_argument("--out", type=Path, default=Path("fuzz-out"))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    res = run(a.examples, a.http_examples, a.out)
    (a.out / "fuzz.json").write_text(json.dumps(res, indent=1))
    rows = "\n".join(f"| {k.split('::')[-1]} | {v['passing']} | {v['failing']} | {v['invalid']} |"
                     for k, v in res["tests"].items())
    md = (f"Fuzz run: {res['wall_s']} s, exit code {res['exit_code']}, pytest {res['pytest']}\n\n"
          f"| test | passing examples | failing | invalid |\n|---|---|---|---|\n{rows}\n")
    (a.out / "fuzz.md").write_text(md)
    print(md)
    return res["exit_code"]


if __name__ == "__main__":
    raise SystemExit(main())
