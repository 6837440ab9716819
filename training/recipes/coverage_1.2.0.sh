#!/usr/bin/env bash
# Reproduce coverage 1.2.0 (2026-11-22, session 3) from the repository root.
# Data: seeds 0 and 2 for training (train variant, 240 + 360 cases), seed 1000 --variant test held out.
# Training: task defaults of training/config.py at this commit (yaw 15 deg + in-plane scale 0.85-1.2,
# 24-epoch cosine schedule, no early stop), seed 0; best epoch 16 on a quiet 2-core CPU (~12 s/epoch).
# Usage: coverage_1.2.0.sh DATA_DIR RUNS_DIR
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs dir}
source "$(dirname "$0")/_gen.sh"

gen coverage "$DATA/coverage-train" 240 0
gen coverage "$DATA/coverage-train-s2" 360 2
gen coverage "$DATA/coverage-test" 100 1000 --variant test
printf 'patience: 30\n' > "$RUNS/coverage_1.2.0.yaml"
scanqc train --task coverage --manifest "$DATA/coverage-train/manifest.csv" --manifest "$DATA/coverage-train-s2/manifest.csv" \
  --out "$RUNS/cov600" --epochs 24 --config "$RUNS/coverage_1.2.0.yaml" --seed 0 --threads 2 --workers 2 --no-progress
scanqc export --run "$RUNS/cov600" --version 1.2.0 --out models --test-manifest "$DATA/coverage-test/manifest.csv" \
  --changelog "600 training cases (seeds 0 and 2) and in-plane scale augmentation (0.85-1.2 per axis) with yaw; held-out: variant=test, seed 1000"
# Promote only if better than the current version on the same held-out set:
scanqc models promote coverage 1.2.0 --manifest "$DATA/coverage-test/manifest.csv"
