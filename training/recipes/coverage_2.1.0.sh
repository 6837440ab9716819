#!/usr/bin/env bash
# Reproduce coverage 2.1.0 (2026-12-01, issue 19): brain-MR coverage from geometry. A MONAI UNet (8-16-32-64,
# 80x48x48 grid) segments the required brain on domain-randomised heads; the coverage decision is the brain's
# cross-section in the end slices (scanqc/checks/brain_coverage.py). Abdominal CT is delegated to coverage 2.0.0.
# Data: 500 heads of seed 500 (train variant, 40 % fully random label intensities) cached as in-plane passes,
# random superior-inferior crops drawn at training time; 60 heads of seed 600 (train variant) to choose the cut
# threshold; 3 heads of seed 9000 for the torch/onnxruntime parity. One CPU thread, 45 minutes of training.
# Held-out figure: `scanqc data generate --task coverage --anatomy head --variant test --seed 4242` (see below).
# Usage (repository root): training/recipes/coverage_2.1.0.sh RUNS_DIR
set -euo pipefail
RUNS=${1:?runs dir}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
BM="python -m scanqc.training.brain_mask"
$BM cache --n 500 --seed 500 --out "$RUNS/cache-train"
$BM cache --n 60 --seed 600 --out "$RUNS/cache-val"
$BM train --cache "$RUNS/cache-train" --out "$RUNS/run" --minutes 45 --seed 0
$BM select --run "$RUNS/run" --cache "$RUNS/cache-val"
$BM export --run "$RUNS/run" --out models --version 2.1.0
# Held-out draws (seed and variant never used in training or selection): 300 coverage cases, 150 of them heads.
scanqc data generate --task coverage --anatomy head --variant test --n 300 --seed 4242 --out "$RUNS/test-cov" --workers 1
mkdir -p "$RUNS/models-2.1.0/coverage" && cp -r models/coverage/2.1.0 "$RUNS/models-2.1.0/coverage/"
scanqc evaluate --manifest "$RUNS/test-cov/manifest.csv" --task coverage --split all --models "$RUNS/models-2.1.0" \
  --out "$RUNS/report-2.1.0"
scanqc evaluate --manifest "$RUNS/test-cov/manifest.csv" --task coverage --split all --out "$RUNS/report-2.0.0"
# Not promoted here: the lead decides on the blind cross-simulator.
