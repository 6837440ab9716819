#!/usr/bin/env bash
# Reproduce the bundled models (models/<task>/1.0.0). Seeds: training data 0, held-out test data 1000
# (variant=test: disjoint base-volume transform ranges), training seed 0. Sized for a 2-core CPU
# (~10 min per task including data generation). Usage: training/recipes/ship_v1.sh DATA_DIR RUNS_DIR [TASK...]
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs dir}; shift 2
TASKS=${*:-"motion contrast_phase coverage"}
declare -A N_TRAIN=([motion]=240 [contrast_phase]=200 [coverage]=240)
declare -A N_TEST=([motion]=90 [contrast_phase]=100 [coverage]=100)
declare -A EPOCHS=([motion]=14 [contrast_phase]=14 [coverage]=14)
for T in $TASKS; do
  [ -f "$DATA/$T-train/manifest.csv" ] || scanqc data generate --task "$T" --n "${N_TRAIN[$T]}" --out "$DATA/$T-train" --seed 0 --workers 2
  [ -f "$DATA/$T-test/manifest.csv" ] || scanqc data generate --task "$T" --n "${N_TEST[$T]}" --out "$DATA/$T-test" --seed 1000 --workers 2 --variant test
  scanqc train --task "$T" --manifest "$DATA/$T-train/manifest.csv" --out "$RUNS/$T" --epochs "${EPOCHS[$T]}" --seed 0 --no-progress
  scanqc export --run "$RUNS/$T" --version 1.0.0 --out models --test-manifest "$DATA/$T-test/manifest.csv" \
    --changelog "first release: trained on scanqc.datasets synthetic data (seed 0), tested on variant=test seed 1000" --force
done
