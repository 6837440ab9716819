"""Export a training run to a versioned ONNX artifact with MONAI-bundle-style metadata.

Writes ``<root>/<task>/<version>/model.onnx`` (single file, no external ``.onnx.data``) and
``metadata.json``; every top-level metadata key is also stored (JSON-encoded) in the ONNX
``metadata_props``. A parity check runs the torch network and onnxruntime on real preprocessed
validation cases and refuses to export when the max abs difference is >= 1e-4.
Metadata layout follows the MONAI bundle ``configs/metadata.json`` schema
(https://docs.monai.io/en/stable/mb_specification.html) plus scanqc fields.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scanqc.models.registry import semver_key
from scanqc.training.config import TrainConfig
from scanqc.training.ensemble import load_run_net
from scanqc.training.train import library_versions, load_case, read_rows

from scanqc.checks.ml import DEFAULT_DOMAINS
from scanqc.errors import ErrorCode, ScanQCError
from scanqc.inference import TASK_OUTPUTS, OnnxModel
from scanqc.preprocessing import PreprocessSpec

PARITY_TOL = 1e-4
MONAI_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
DESCRIPTIONS = {
    "motion": "Brain MR motion artefact classifier (none / mild / severe), trained on k-space motion simulation",
    "contrast_phase": "Abdominal CT contrast phase (non-contrast / arterial / portal venous / delayed) and "
                      "suboptimal-enhancement classifier",
    "coverage": "Anatomical coverage: is the superior / inferior end of the required region (whole brain on MR, "
                "liver dome to kidneys on CT) cut by the scanned extent",
}


def _onnx_export(net: torch.nn.Module, x: torch.Tensor, path: Path, opset: int = 18) -> str:
    """Single-file ONNX with a dynamic batch axis; dynamo exporter first, legacy as fallback."""
    try:
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.onnx.export(net, (x,), str(path), dynamo=True, external_data=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"], dynamic_shapes=({0: batch},),
                          verbose=False)
        how = "dynamo"
    except Exception:
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        how = "torchscript"
    if path.with_suffix(".onnx.data").exists() or any(path.parent.glob("*.data")):
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: exporter wrote external data; expected a single file")
    return how


def export_run(run_dir: str | Path, version: str, out_root: str | Path, *, changelog: str = "",
               test_manifest: str | Path | None = None, parity_cases: int = 4, force: bool = False) -> Path:
    """Export ``run_dir`` (from :func:`scanqc.training.train.train`) as ``out_root/<task>/<version>``."""
    run_dir = Path(run_dir)
    semver_key(version)
    try:
        summary = json.loads((run_dir / "train_summary.json").read_text())
    except FileNotFoundError:
        raise ScanQCError(ErrorCode.USAGE, f"{run_dir}: no train_summary.json (run `scanqc train` first)") from None
    cfg = TrainConfig(**summary["config"])
    task, spec = cfg.task, cfg.spec
    dest = Path(out_root) / task / version
    if dest.exists() and not force:
        raise ScanQCError(ErrorCode.USAGE, f"{dest} exists; choose a new version or pass --force")
    net, _ = load_run_net(run_dir)  # one network, or a ProbabilityEnsemble of several (training/ensemble.py)

    # Real inputs for the parity check: validation cases of the training manifest.
    rows = read_rows(summary["manifest"], task)
    want = set(summary.get("val_case_ids") or [])
    rows = [r for r in rows if r.get("case_id") in want] or rows
    xs = np.stack([load_case(r, spec) for r in rows[:parity_cases]])
    with torch.no_grad():
        ref = net(torch.from_numpy(xs)).numpy()

    tmp = Path(tempfile.mkdtemp(prefix=f"scanqc-export-{task}-"))
    try:
        onnx_path = tmp / "model.onnx"
        how = _onnx_export(net, torch.from_numpy(xs[:1]), onnx_path)
        got = OnnxModel(onnx_path, (spec.in_channels, *spec.shape)).run(xs)
        diff = float(np.max(np.abs(got - ref)))
        if not np.isfinite(diff) or diff >= PARITY_TOL:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"torch/onnxruntime parity failed for {task}: max abs diff "
                                                   f"{diff:.3g} >= {PARITY_TOL}")
        n_params = int(sum(p.numel() for p in net.parameters()))
        meta = build_metadata(summary, cfg, version, changelog, how, diff, len(xs), n_params)
        validate_metadata(meta)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        if test_manifest:
            from scanqc.models.evaluate import evaluate_model
            from scanqc.models.registry import InstalledModel

            meta["metrics"]["test"] = evaluate_model(InstalledModel(task, version, tmp, "staging", meta),
                                                     test_manifest, split="all")
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_metadata_props(onnx_path, meta)
        meta["onnx"]["sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        meta["onnx"]["bytes"] = onnx_path.stat().st_size
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_metadata(summary: dict[str, Any], cfg: TrainConfig, version: str, changelog: str, exporter: str,
                   parity: float, n_parity: int, n_params: int) -> dict[str, Any]:
    spec = cfg.spec
    task = cfg.task
    labels = list(TASK_OUTPUTS[task])
    libs = summary.get("libraries") or library_versions()
    return {
        "schema": MONAI_SCHEMA,
        "name": f"scanqc_{task}",
        "task": task,
        "version": version,
        "changelog": {version: changelog or f"trained {summary.get('date', '')}"},
        "monai_version": libs.get("monai"),
        "pytorch_version": libs.get("torch"),
        "numpy_version": libs.get("numpy"),
        "required_packages_version": {"onnxruntime": ">=1.17"},
        "optional_packages_version": {k: v for k, v in libs.items() if k not in ("monai", "torch", "numpy")},
        "description": DESCRIPTIONS[task],
        "authors": "scanqc contributors",
        "copyright": "Apache-2.0",
        "data_source": "scanqc.datasets synthetic generators (see training.manifest)",
        "data_type": "nifti",
        "image_classes": f"{spec.in_channels}-channel float32 volume, see preprocessing",
        "label_classes": ", ".join(labels),  # a string in the MONAI schema; the list is "labels"
        "labels": labels,
        "network": {"class": "monai.networks.nets.Classifier", "channels": list(cfg.channels),
                    "strides": list(cfg.strides), "num_res_units": cfg.num_res_units, "norm": "BATCH",
                    "act": "PRELU", "head": cfg.head, "parameters": n_params,
                    # several members: probabilities averaged in the graph (training/ensemble.py)
                    **({"ensemble": "scanqc.training.ensemble.ProbabilityEnsemble",
                        "members": len(summary["ensemble"])} if summary.get("ensemble") else {})},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "/".join(spec.modalities),
                                 "num_channels": spec.in_channels, "spatial_shape": list(spec.shape),
                                 "dtype": "float32", "value_range": [-0.5, 2.0], "is_patch_data": False,
                                 "channel_def": _channel_def(spec)}},
            "outputs": {"logits": {"type": "logits", "format": "classes", "num_channels": len(labels),
                                   "spatial_shape": [len(labels)], "dtype": "float32", "value_range": [],
                                   "is_onehot": False, "channel_def": {str(i): k for i, k in enumerate(labels)}}},
        },
        "preprocessing": spec.to_dict(),
        "calibration": summary["calibration"],
        "thresholds": summary["thresholds"],
        # What the training data covered; the checks skip series outside it (scanqc.checks.ml.outside_domain).
        "domain": DEFAULT_DOMAINS[task],
        "metrics": {"validation": summary["validation_metrics"]},
        "training": portable_training({
            "command": summary["command"], "seed": summary["seed"], "config": summary["config"],
            "manifest": summary["manifest"], "manifest_sha256": summary["manifest_sha256"],
            **({"manifests": summary["manifests"]} if summary.get("manifests") else {}),
            "n_train": summary["n_train"], "n_val": summary["n_val"], "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"], "device": summary["device"], "date": summary["date"],
            "train_seconds": summary.get("train_seconds"),
            **({"ensemble": summary["ensemble"]} if summary.get("ensemble") else {}),
        }, summary.get("cwd")),
        "onnx": {"file": "model.onnx", "exporter": exporter, "opset": 18, "input": "image", "output": "logits",
                 "parity_max_abs_diff": parity, "parity_cases": n_parity, "parity_tolerance": PARITY_TOL,
                 "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def portable_training(training: dict[str, Any], base: str | Path | None) -> dict[str, Any]:
    """The metadata's ``training`` record with every path relative to ``base`` (the folder training ran in;
    see :func:`scanqc.models.evaluate.portable_path`): the artifact is read on other machines."""
    from scanqc.models.evaluate import portable_command, portable_path

    def paths(v: Any) -> Any:
        return [portable_path(m, base) for m in v] if isinstance(v, list) else portable_path(v, base)

    out = dict(training)
    if isinstance(out.get("command"), str):
        out["command"] = portable_command(out["command"], base)
    if "manifest" in out:
        out["manifest"] = paths(out["manifest"])
    if out.get("manifests"):
        out["manifests"] = [{**m, "path": portable_path(m["path"], base)} for m in out["manifests"]]
    if out.get("ensemble"):
        out["ensemble"] = [{**e, **({"run": portable_path(e["run"], base)} if "run" in e else {}),
                            **({"command": portable_command(e["command"], base)} if "command" in e else {}),
                            **({"manifest": paths(e["manifest"])} if "manifest" in e else {})}
                           for e in out["ensemble"]]
    return out


def _channel_def(spec: Any) -> dict[str, str]:
    return {str(i): n for i, n in enumerate(spec.channel_names())}


#: The MONAI bundle metadata schema named by ``MONAI_SCHEMA``, vendored (training/schema/README.md) so that
#: exports and tests validate offline.
SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / Path(MONAI_SCHEMA).name


def validate_metadata(meta: dict[str, Any]) -> None:
    """``BAD_MODEL`` unless ``meta`` passes the MONAI bundle metadata schema and its channel lists agree.

    Uses ``jsonschema`` (MONAI's own ``verify_metadata`` does the same after downloading the schema).
    """
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    errors = list(cls(schema).iter_errors(meta))
    if errors:
        best = jsonschema.exceptions.best_match(errors)  # descends into anyOf: names the missing field
        where = "/".join(str(p) for p in best.absolute_path) or "(top level)"
        raise ScanQCError(ErrorCode.BAD_MODEL, f"metadata fails the MONAI bundle schema at {where}: "
                                               f"{best.message} ({len(errors)} error(s))")
    for side in ("inputs", "outputs"):
        for name, t in meta["network_data_format"][side].items():
            if isinstance(t, dict) and "channel_def" in t and len(t["channel_def"]) != t["num_channels"]:
                raise ScanQCError(ErrorCode.BAD_MODEL, f"metadata {side}/{name}: num_channels {t['num_channels']}"
                                                       f" but channel_def names {len(t['channel_def'])}")


def refresh_metadata(folder: str | Path, base: str | Path) -> dict[str, Any]:
    """Bring an exported model's ``metadata.json`` (and its copy in the ONNX ``metadata_props``) up to the
    current exporter: channel names from the spec, the schema's string ``label_classes``, portable paths
    (``base``: the folder it was trained in). The graph is unchanged: the rewritten ONNX must give
    bit-identical outputs on a random input, or nothing is written."""
    from scanqc.models.evaluate import portable_path

    folder = Path(folder)
    meta = json.loads((folder / "metadata.json").read_text())
    spec = PreprocessSpec.from_dict(meta["preprocessing"])
    meta["network_data_format"]["inputs"]["image"]["channel_def"] = _channel_def(spec)
    meta["label_classes"] = ", ".join(meta["labels"])
    meta["training"] = portable_training(meta["training"], base)
    for m in (meta.get("metrics") or {}).values():
        if isinstance(m, dict) and isinstance(m.get("manifest"), str):
            m["manifest"] = portable_path(m["manifest"], base)
    validate_metadata(meta)
    onnx_path = folder / "model.onnx"
    x = np.random.default_rng(0).uniform(-0.5, 2.0, (2, spec.in_channels, *spec.shape)).astype(np.float32)
    before = OnnxModel(onnx_path, (spec.in_channels, *spec.shape)).run(x)
    tmp = folder / "model.onnx.tmp"
    shutil.copyfile(onnx_path, tmp)
    try:
        write_metadata_props(tmp, meta)
        after = OnnxModel(tmp, (spec.in_channels, *spec.shape)).run(x)
        if not np.array_equal(before, after):
            raise ScanQCError(ErrorCode.BAD_MODEL, f"{folder}: outputs changed when re-embedding metadata")
        meta["onnx"]["sha256"] = hashlib.sha256(tmp.read_bytes()).hexdigest()
        meta["onnx"]["bytes"] = tmp.stat().st_size
        tmp.replace(onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _drop_stack_traces(model: Any) -> None:
    """Remove the dynamo exporter's per-node ``pkg.torch.onnx.stack_trace``: Python tracebacks naming
    source files by absolute path on the exporting machine. The graph and its computation are untouched."""
    def graphs(g: Any) -> Any:
        yield g
        for n in g.node:
            for a in n.attribute:
                if a.HasField("g"):
                    yield from graphs(a.g)
                for sub in a.graphs:
                    yield from graphs(sub)

    nodes = [n for g in graphs(model.graph) for n in g.node] + [n for f in model.functions for n in f.node]
    for n in nodes:
        keep = [(p.key, p.value) for p in n.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(keep) != len(n.metadata_props):
            del n.metadata_props[:]
            for k, v in keep:
                e = n.metadata_props.add()
                e.key, e.value = k, v


def write_metadata_props(onnx_path: Path, meta: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(onnx_path))
    _drop_stack_traces(model)
    del model.metadata_props[:]
    for k, v in meta.items():
        if k == "onnx":
            continue
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    model.doc_string = meta.get("description", "")
    model.model_version = semver_key(meta["version"])[0] * 10000 + semver_key(meta["version"])[1] * 100 + \
        semver_key(meta["version"])[2]
    onnx.save(model, str(onnx_path))
