from __future__ import annotations

from scanqc.pipeline import check_path


def test_gap_fails_with_resend_action(write_series):
    folder = write_series("ct", shape=(12, 16, 16))
    for f in sorted(folder.iterdir())[5:7]:
        f.unlink()
    (v,) = check_path(folder)
    c = v.checks["integrity"]
    assert c.status == "fail" and "2 slice(s) missing" in c.message and "Resend" in c.action
    assert v.status == "fail" and v.actions[0] == c.action


def test_regular_series_passes(write_series):
    (v,) = check_path(write_series("ct", shape=(12, 16, 16)))
    assert v.checks["integrity"].status == "pass"
