#!/usr/bin/env bash
# Reproduce the models added on 2026-11-22 (motion 1.0.0, coverage 1.1.0) from the repository root.
# Data: seeds 0 and 2 for training (train variant), seed 1000 --variant test for the held-out sets.
# Training seed 0. Both runs were made on a shared 2-core CPU; motion was stopped with a STOP file after
# epoch 11 (best epoch 5 kept), which `--epochs 11` reproduces. Usage: ship_2026_11_22.sh DATA_DIR RUNS_DIR
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs dir}
source "$(dirname "$0")/_gen.sh"

# motion 1.0.0: 600 brain MR (240 seed 0 + 360 seed 2), task defaults (background channel, 5 stride-2 stages)
gen motion "$DATA/motion-train" 240 0 --min-artefact-to-noise 0
gen motion "$DATA/motion-train-s2" 360 2 --min-artefact-to-noise 0
gen motion "$DATA/motion-test" 90 1000 --variant test --min-artefact-to-noise 0
scanqc train --task motion --manifest "$DATA/motion-train/manifest.csv" --manifest "$DATA/motion-train-s2/manifest.csv" \
  --out "$RUNS/motion_600" --epochs 11 --seed 0 --threads 2 --workers 2 --no-progress
scanqc export --run "$RUNS/motion_600" --version 1.0.0 --out models --test-manifest "$DATA/motion-test/manifest.csv" \
  --changelog "first release: 600 synthetic brain MR (seeds 0 and 2), background channel; held-out: variant=test, seed 1000"

# coverage 1.1.0: the 1.0.0 data (240 cases, seed 0) + yaw augmentation (training/config.py defaults)
gen coverage "$DATA/coverage-train" 240 0
gen coverage "$DATA/coverage-test" 100 1000 --variant test
scanqc train --task coverage --manifest "$DATA/coverage-train/manifest.csv" --out "$RUNS/coverage_yaw" --epochs 30 \
  --seed 0 --threads 1 --workers 1 --max-minutes 14 --no-progress
scanqc export --run "$RUNS/coverage_yaw" --version 1.1.0 --out models --test-manifest "$DATA/coverage-test/manifest.csv" \
  --changelog "yaw (rotation about the superior-inferior axis) augmentation; same 240 training cases"
# Promote only if better than the current version on the same held-out set:
scanqc models promote coverage 1.1.0 --manifest "$DATA/coverage-test/manifest.csv"
