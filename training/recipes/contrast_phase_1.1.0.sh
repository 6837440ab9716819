#!/usr/bin/env bash
# Reproduce contrast_phase 1.1.0 (2026-11-22, session 3) from the repository root.
# Data: the generator at this commit labels an early-timed portal-venous scan by the phase it shows
# (arterial; docs/data.md), so data made before it must be generated again. Seeds 0 (200 cases) and
# 1 (400) for training, 1000 --variant test (100) held out. Training: task defaults plus auxiliary HU
# targets (`aux_hu`, docs/training.md), 40-epoch cosine schedule without early stop, seed 0.
# Usage: contrast_phase_1.1.0.sh DATA_DIR RUNS_DIR
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs dir}
source "$(dirname "$0")/_gen.sh"

gen contrast_phase "$DATA/contrast_phase-train" 200 0
gen contrast_phase "$DATA/contrast_phase-train-s1" 400 1
gen contrast_phase "$DATA/contrast_phase-test" 100 1000 --variant test
printf 'patience: 40\naux_hu: [aorta, portal_vein, ivc, liver, kidney_cortex, collecting_system]\naux_weight: 0.5\n' \
  > "$RUNS/contrast_phase_1.1.0.yaml"
scanqc train --task contrast_phase --manifest "$DATA/contrast_phase-train/manifest.csv" \
  --manifest "$DATA/contrast_phase-train-s1/manifest.csv" --out "$RUNS/cp2_aux" --epochs 40 \
  --config "$RUNS/contrast_phase_1.1.0.yaml" --seed 0 --threads 2 --workers 2 --no-progress
scanqc export --run "$RUNS/cp2_aux" --version 1.1.0 --out models --test-manifest "$DATA/contrast_phase-test/manifest.csv" \
  --changelog "labels follow the phase the image shows (early portal venous = arterial); auxiliary HU regression of 6 structures; held-out: variant=test, seed 1000"
# Promote only if better than the current version on the same held-out set:
scanqc models promote contrast_phase 1.1.0 --manifest "$DATA/contrast_phase-test/manifest.csv"
