#!/usr/bin/env bash
# Reproduce contrast_phase 2.0.0 (contrast phase by measurement) from the repository root.
# Data: the domain-randomised abdominal CT generator (datasets/abdomen.py, `--generator abdomen`), seed 0 for
# training (its first 133 cases by case id: the session's generation was stopped there for CPU time; split
# column train/val as written), seed 1000 `--variant test` (n=200) held out. No network: the check locates
# the aorta, IVC, liver and kidneys (scanqc/checks/abdomen_anatomy.py), and a multinomial logistic regression
# over the measured HU (scikit-learn at training time, exported as a 5-node ONNX graph) gives the phase; a
# binary one gives suboptimal enhancement. Runtime: onnxruntime + numpy/scipy.
# Usage: contrast_phase_2.0.0.sh DATA_DIR
set -euo pipefail
DATA=${1:?data dir}
scanqc data generate --task contrast_phase --n 240 --seed 0 --generator abdomen --out "$DATA/cp-train" --workers 2
scanqc data generate --task contrast_phase --n 200 --seed 1000 --variant test --generator abdomen \
  --out "$DATA/cp-test" --workers 2
python -m scanqc.training.abdomen_phase --manifest "$DATA/cp-train/manifest.csv" --limit 133 --workers 2 \
  --out models --version 2.0.0
# Held-out figures (95 % bootstrap intervals), next to the CNN 1.2.0 and on the old phantom's draws:
scanqc data generate --task contrast_phase --n 200 --seed 1000 --variant test --out "$DATA/cp-test-phantom" --workers 2
scanqc evaluate --manifest "$DATA/cp-test/manifest.csv" --task contrast_phase --models models --out "$DATA/eval-cp-2.0.0"
scanqc evaluate --manifest "$DATA/cp-test-phantom/manifest.csv" --task contrast_phase --models models \
  --out "$DATA/eval-cp-2.0.0-phantom"
# Promote only on those figures (see docs/models.md):
scanqc models promote contrast_phase 2.0.0 --manifest "$DATA/cp-test/manifest.csv"
