#!/usr/bin/env bash
# Motion (MR) with the background channel (scanqc.preprocessing step 4, DEFAULT_SPECS["motion"]):
# the exact commands of the 2026-11 attempt. Data: seed 0 (train, 240 cases), seed 1000 --variant test
# (held-out, 90 cases); training seed 0, task defaults (5 stride-2 stages), 2 threads.
# Outcome: see docs/models.md ("motion"): held-out ROC AUC 0.88 (below the 0.90 ship bar) -> not shipped;
# the export goes to RUNS_DIR, not models/. Usage: training/recipes/motion_v1.sh DATA_DIR RUNS_DIR
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs dir}
source "$(dirname "$0")/_gen.sh"
gen motion "$DATA/motion-train" 240 0 --min-artefact-to-noise 0
gen motion "$DATA/motion-test" 90 1000 --variant test --min-artefact-to-noise 0
scanqc train --task motion --manifest "$DATA/motion-train/manifest.csv" --out "$RUNS/motion-v1" --seed 0 \
  --threads 2 --workers 2 --epochs 40 --max-minutes 11 --no-progress
scanqc export --run "$RUNS/motion-v1" --version 1.0.0 --out "$RUNS/motion-export" \
  --test-manifest "$DATA/motion-test/manifest.csv"
