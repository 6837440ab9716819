#!/usr/bin/env bash
# Reproduce contrast_phase 1.2.0 (2026-11-22, session 4) from the repository root.
# Data: the generator labels of 1.1.0 (early-timed portal venous = arterial). Seeds 0 (200 cases), 1 (400) and
# 2 (600) for training (960 train / 240 validation by the manifests' split column), 1000 --variant test (100)
# held out. Training: a position-free head (`head: pool`: global max + mean pooling of a 6^3 last map, strides
# 2-2-2-1-1), the auxiliary HU targets of 1.1.0, 40-epoch cosine schedule without early stop, seed 0.
# Usage: contrast_phase_1.2.0.sh DATA_DIR RUNS_DIR
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs dir}
source "$(dirname "$0")/_gen.sh"

gen contrast_phase "$DATA/contrast_phase-train" 200 0
gen contrast_phase "$DATA/contrast_phase-train-s1" 400 1
gen contrast_phase "$DATA/contrast_phase-train-s2" 600 2
gen contrast_phase "$DATA/contrast_phase-test" 100 1000 --variant test
printf 'patience: 40\naux_hu: [aorta, portal_vein, ivc, liver, kidney_cortex, collecting_system]\naux_weight: 0.5\nstrides: [2, 2, 2, 1, 1]\nhead: pool\n' \
  > "$RUNS/contrast_phase_1.2.0.yaml"
scanqc train --task contrast_phase --manifest "$DATA/contrast_phase-train/manifest.csv" \
  --manifest "$DATA/contrast_phase-train-s1/manifest.csv" --manifest "$DATA/contrast_phase-train-s2/manifest.csv" \
  --out "$RUNS/cp_pool1200" --epochs 40 --config "$RUNS/contrast_phase_1.2.0.yaml" --seed 0 --threads 2 --workers 2 \
  --no-progress
scanqc export --run "$RUNS/cp_pool1200" --version 1.2.0 --out models --test-manifest "$DATA/contrast_phase-test/manifest.csv" \
  --changelog "position-free head (global max + mean pooling, strides 2-2-2-1-1), 1200 training cases (seeds 0, 1, 2), auxiliary HU targets; held-out: variant=test, seed 1000"
# Promote only if better than the current version on the same held-out set:
scanqc models promote contrast_phase 1.2.0 --manifest "$DATA/contrast_phase-test/manifest.csv"
