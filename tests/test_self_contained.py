"""The repository stands on its own: no tracked file names a folder of the machine it was built on.

Model metadata, commands recorded in it and code comments once carried paths under the training machine's ``/work``
and cited a README outside the repository; on another machine they point nowhere (issue 20, item 11).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# An absolute path under a build machine's usual roots (not preceded by a URL host or a word character).
BUILD_PATH = re.compile(rb"(?<![A-Za-z0-9_.~:/-])/(?:work|home|Users|mnt|scratch|builds?|root)/[A-Za-z0-9_.-]+")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_no_tracked_file_names_an_absolute_build_path():
    here = str(ROOT).encode()
    home = str(Path.home()).encode()
    hits = []
    for p in _tracked():
        if not p.is_file():
            continue
        data = p.read_bytes()  # binary files too: model.onnx carries the metadata in metadata_props
        for m in BUILD_PATH.finditer(data):
            hits.append(f"{p.relative_to(ROOT)}: {m.group().decode(errors='replace')}")
        for s in (here, home):
            if len(s) > 1 and s in data:
                hits.append(f"{p.relative_to(ROOT)}: {s.decode()}")
    assert not hits, "absolute paths of a build machine in tracked files:\n" + "\n".join(sorted(set(hits))[:40])


def test_pattern_finds_the_paths_it_is_for():
    root, home = b"/" + b"work", b"/" + b"home"  # split, so this file does not match itself
    assert BUILD_PATH.search(b'"manifest": "' + root + b'/data/motion-test/manifest.csv"')
    assert BUILD_PATH.search(b"cited in " + home + b"/alice/README.md")
    assert not BUILD_PATH.search(b"https://github.com/Project-MONAI/work/x and ~/.local/share/scanqc")
    assert not BUILD_PATH.search(b"--out /tmp/bench")  # an example output folder in docs is not a build path


def test_hu_table_is_cited_from_the_projects_own_docs():
    doc = (ROOT / "docs" / "hu-reference.md").read_text()
    from scanqc.datasets.ct_phantom import HU_TABLE

    for lo, hi in HU_TABLE["aorta"].values():  # the table the phantom uses is the one documented
        assert f"{lo:g}-{hi:g}" in doc
    for f in ("datasets/ct_phantom.py", "docs/data.md"):
        text = (ROOT / f).read_text()
        assert "hu-reference.md" in text and "shared/README" not in text, f
