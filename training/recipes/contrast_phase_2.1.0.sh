#!/usr/bin/env bash
# Reproduce the abdominal segmentation network abdomen_seg 1.0.0 and contrast_phase 2.1.0 (contrast phase by HU
# measured on the segmentation) from the repository root, and their held-out figures.
# One CPU thread per job (2 shared cores): ~45 min for the network, ~15 min for the classifier's features.
# No stored data: the network draws its cases while it trains (scanqc.datasets.abdomen make_labels/render, every
# non-label parameter random, chest-to-pelvis extents cut at random); the classifier draws its own
# (abdomen_phase.collect: make_abdomen at 2.5-5 mm slices, 2.5-3 mm pixels).
# Usage: contrast_phase_2.1.0.sh DATA_DIR
set -euo pipefail
DATA=${1:?data dir}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# 1. Segmentation network -> models/abdomen_seg/1.0.0 (held-out Dice on 12 variant-test draws in its metadata).
nice -n 10 python -m scanqc.training.abdomen_seg --minutes 42 --steps-per-case 3 --out models --version 1.0.0 \
  --checkpoint "$DATA/abdomen_seg.pt"
# 2. HU classifier on the network's measurements: 320 train draws (seed 0), 200 held-out variant-test draws
#    (seed 1000); accuracy with a stratified bootstrap interval overall and Wilson intervals per phase in
#    metadata.json metrics.validation.
nice -n 10 python -m scanqc.training.abdomen_phase --n 320 --seed 0 --n-val 200 --val-seed 1000 --val-variant test \
  --workers 1 --out models --version 2.1.0 --features-cache "$DATA/cp-2.1.0-features.json" \
  --changelog "contrast phase by HU measured on the abdominal segmentation network (abdomen_seg 1.0.0)"
# 3. The old CT phantom's held-out draws, scored by `scanqc evaluate` with a models folder holding only 2.1.0:
nice -n 10 scanqc data generate --task contrast_phase --n 200 --seed 1000 --variant test --out "$DATA/cp-test-phantom" \
  --workers 1
mkdir -p "$DATA/m210/contrast_phase" && cp -r models/contrast_phase/2.1.0 "$DATA/m210/contrast_phase/"
scanqc evaluate --manifest "$DATA/cp-test-phantom/manifest.csv" --task contrast_phase --split all \
  --models "$DATA/m210" --out "$DATA/eval-cp-2.1.0-phantom"
# 3b. The abdomen generator written at its own resolution (the manifest type of 2.0.0's 0.750):
nice -n 10 scanqc data generate --task contrast_phase --n 200 --seed 1000 --variant test --generator abdomen \
  --out "$DATA/cp-test-abd" --workers 1
scanqc evaluate --manifest "$DATA/cp-test-abd/manifest.csv" --task contrast_phase --split all \
  --models "$DATA/m210" --out "$DATA/eval-cp-2.1.0-abd"
# 4. Abdominal coverage by geometry on the abdomen generator's held-out draws:
nice -n 10 scanqc data generate --task coverage --generator abdomen --n 120 --seed 2000 --variant test \
  --out "$DATA/cov-test" --workers 1
SCANQC_ABDOMINAL_COVERAGE=anatomy python -m scanqc.training.abdomen_coverage_eval \
  --manifest "$DATA/cov-test/manifest.csv" --out "$DATA/cov-eval-seg.json" --workers 1
# Not promoted here: the lead decides on the blind test (docs/models.md).
# 5. Runtime of the localisation + measurement on a 200 x 512^2 CT:
python -m scanqc.training.abdomen_timing --runs 5
