#!/usr/bin/env bash
# Reproduce contrast_phase 2.2.0 (HU classifier over the abdominal segmentation's measurements, 28 features: the
# kidneys' top percentile without the neighbouring bone, enhancement ratios to the aorta's) from the repository
# root, and its held-out figures. The segmentation network is abdomen_seg 1.0.0 (contrast_phase_2.1.0.sh).
# Training draws are written at the generator's own resolution (0.6-5 mm slices, 1.2-3 mm pixels), as the check
# sees scans; C chosen on the validation draws (seed 2000, variant test), the test draws (seed 1000) reported.
# One CPU thread: ~25 min of generation, ~10 min of feature collection.
# Usage: contrast_phase_2.2.0.sh DATA_DIR
set -euo pipefail
DATA=${1:?data dir}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
. "$(dirname "$0")/_abdomen.sh"
abdomen_draws "$DATA"
# Train on both training manifests (their own 'val' rows are the exporter's in-distribution validation).
nice -n 10 python -m scanqc.training.abdomen_phase --manifest "$DATA/train-abd/manifest.csv" \
  --manifest "$DATA/train2-abd/manifest.csv" --workers 1 --C 0.3 --out models --version 2.2.0 \
  --features-cache "$DATA/f-2.2.0.json" \
  --changelog "28 HU features: kidneys' top percentile without bone, enhancement ratios to the aorta; trained at the generator's own resolution"
held_out 2.2.0 "$DATA" val-abd test-abd
# The old CT phantom's held-out draws:
nice -n 10 scanqc data generate --task contrast_phase --generator phantom --n 200 --seed 1000 --variant test \
  --out "$DATA/cp-test-phantom" --workers 1
scanqc evaluate --manifest "$DATA/cp-test-phantom/manifest.csv" --task contrast_phase --split all \
  --models "$DATA/m220" --out "$DATA/eval-2.2.0-phantom"
# Promotion is decided on the blind cross-simulator (docs/crosssim.md), by the lead.
