#!/usr/bin/env bash
# Reproduce motion 2.0.0 (2026-12-01, session 7; issue 19) from the repository root: the first motion model
# trained on domain-randomised whole heads (scalp, skull, fat, face, neck; T1/T2/PD/FLAIR and random contrasts;
# 2D/3D; artefacts along the written phase-encode axis) instead of the skull-stripped MNI152 template.
# Data: 800 heads, seed 100 (train + val); held out: the training generator's own test variant (seed 5000,
# 150 heads) and the blind cross-simulator (scanqc evaluate crosssim, seed 1, 120 heads), which decides promotion.
# Members (seed 0, 2 threads, 25-minute budget each on 2 shared CPU cores):
#   a. task defaults (dense head) + elastic deformation of each batch;
#   b. as a with the position-free pool head.
# The ensemble averages their probabilities and is calibrated on the validation rows (seen by neither member).
# Usage: motion_2.0.0.sh DATA_DIR RUNS_DIR
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs dir}
source "$(dirname "$0")/_gen.sh"

gen motion "$DATA/hm-train" 800 100 --anatomy head
gen motion "$DATA/hm-test" 150 5000 --anatomy head --variant test
[ -f "$DATA/crosssim-motion/manifest.csv" ] || scanqc evaluate crosssim --task motion --n 120 --seed 1 \
  --out "$DATA/crosssim-motion" --workers 2
M=(--manifest "$DATA/hm-train/manifest.csv")
T=(--seed 0 --threads 2 --workers 2 --no-progress --max-minutes 25)
printf 'patience: 8\nelastic_voxels: 2.0\nelastic_grid: 7\n' > "$RUNS/m2a.yaml"
printf 'patience: 8\nelastic_voxels: 2.0\nelastic_grid: 7\nhead: pool\n' > "$RUNS/m2b.yaml"
scanqc train --task motion "${M[@]}" --out "$RUNS/m2a" --epochs 30 --config "$RUNS/m2a.yaml" "${T[@]}"
scanqc train --task motion "${M[@]}" --out "$RUNS/m2b" --epochs 30 --config "$RUNS/m2b.yaml" "${T[@]}"
scanqc ensemble --run "$RUNS/m2a" --run "$RUNS/m2b" "${M[@]}" --out "$RUNS/m2_ens"
scanqc export --run "$RUNS/m2_ens" --version 2.0.0 --out models --test-manifest "$DATA/hm-test/manifest.csv" \
  --changelog "trained on domain-randomised whole heads (scanqc.datasets.head); ensemble of a dense-head and a pool-head network"
# Both test families side by side; promotion decides on the blind one:
scanqc evaluate --manifest "$DATA/hm-test/manifest.csv" --task motion --split all --out "$RUNS/eval-own"
scanqc evaluate --manifest "$DATA/crosssim-motion/manifest.csv" --task motion --split all --out "$RUNS/eval-crosssim"
scanqc models promote motion 2.0.0 --manifest "$DATA/crosssim-motion/manifest.csv" --split all
