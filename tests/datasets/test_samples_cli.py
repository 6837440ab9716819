from __future__ import annotations

from scanqc.datasets.cli import app
from scanqc.datasets.samples import write_sample
from typer.testing import CliRunner

from scanqc.series import load_series


def test_brain_sample_headers(tmp_path):
    folder = write_sample("brain_mr", tmp_path / "brain")
    s = load_series(folder)[0][0]
    assert s.modality == "MR" and s.volume.shape[1:] == (256, 256) and s.volume.spacing[0] == 1.0
    assert float(s.get("MagneticFieldStrength")) == 3.0 and float(s.get("RepetitionTime")) == 2300


def test_cli_generate_and_preview(tmp_path):
    r = CliRunner().invoke(app, ["generate", "--task", "coverage", "--n", "2", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["preview", str(tmp_path / "d" / "manifest.csv"), "--out", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p.png").stat().st_size > 1000
    r = CliRunner().invoke(app, ["generate", "--task", "nope", "--n", "1", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "'nope'" in r.output


def test_cli_min_artefact_to_noise_reaches_the_generator(tmp_path):
    from scanqc.datasets.manifest import read_manifest

    # Every motion case, moved or not, records the rule it was generated under.
    args = ["generate", "--task", "motion", "--n", "2", "--seed", "0"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m"), "--min-artefact-to-noise", "0"])
    assert r.exit_code == 0, r.output
    arts = [row.provenance["artefact"] for row in read_manifest(tmp_path / "m" / "manifest.csv")]
    assert {a["min_artefact_to_noise"] for a in arts} == {0.0}
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), "--min-artefact-to-noise", "-1"])
    assert r.exit_code == 2 and "got -1.0" in r.output


def test_brain_sample_seed_varies_the_anatomy_not_only_the_noise():
    from scanqc.datasets.samples import brain_mr_sample

    a, _, info_a = brain_mr_sample(0)
    b, _, info_b = brain_mr_sample(3)
    assert info_a["deformation"] is None and info_b["deformation"]["rotation_deg"] != [0.0, 0.0, 0.0]
    head_a, head_b = a.array > 200, b.array > 200
    # noise alone moves ~0.002 % of voxels across this threshold (measured); another head moves > 1 %
    assert float((head_a != head_b).mean()) > 0.01
    assert abs(int(head_a.sum()) - int(head_b.sum())) > 0 and a.shape == b.shape
