#!/usr/bin/env bash
# Reproduce the bundled models (models/<task>/1.0.0) from the repository root.
# Seeds: training data 0 (contrast phase also 1), held-out test data 1000 with --variant test (disjoint
# base-volume transform ranges), training seed 0. Sized for a shared 2-core CPU: --threads 1 and a
# --max-minutes budget per task (the best validation epoch is kept; the stop epoch is recorded in metadata).
# Usage: training/recipes/ship_v1.sh DATA_DIR RUNS_DIR [TASK...]
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs dir}; shift 2
TASKS=${*:-"motion contrast_phase coverage"}
source "$(dirname "$0")/_gen.sh"
for T in $TASKS; do
  EXTRA=()
  case $T in
    motion)         gen motion "$DATA/motion-train" 240 0 --min-artefact-to-noise 0; gen motion "$DATA/motion-test" 90 1000 --variant test --min-artefact-to-noise 0
                    MANIFESTS=(--manifest "$DATA/motion-train/manifest.csv"); MINUTES=12
                    EXTRA=(--config training/recipes/motion.yaml) ;;
    contrast_phase) gen contrast_phase "$DATA/contrast_phase-train" 200 0
                    gen contrast_phase "$DATA/contrast_phase-train-s1" 400 1
                    gen contrast_phase "$DATA/contrast_phase-test" 100 1000 --variant test
                    MANIFESTS=(--manifest "$DATA/contrast_phase-train/manifest.csv"
                               --manifest "$DATA/contrast_phase-train-s1/manifest.csv"); MINUTES=15 ;;
    coverage)       gen coverage "$DATA/coverage-train" 240 0; gen coverage "$DATA/coverage-test" 100 1000 --variant test
                    MANIFESTS=(--manifest "$DATA/coverage-train/manifest.csv"); MINUTES=14 ;;
  esac
  scanqc train --task "$T" "${MANIFESTS[@]}" "${EXTRA[@]}" --out "$RUNS/$T" --epochs 30 --seed 0 --threads 1 \
    --max-minutes "$MINUTES" --no-progress
  scanqc export --run "$RUNS/$T" --version 1.0.0 --out models --test-manifest "$DATA/$T-test/manifest.csv" \
    --changelog "first release: scanqc.datasets synthetic data; held-out test: variant=test, seed 1000" --force
  printf '{"version": "1.0.0", "source": "bundled", "reason": "first release"}\n' > "models/$T/promoted.json"
  scanqc baseline --task "$T" "${MANIFESTS[@]}" --out "$RUNS/$T-baseline" --test-manifest "$DATA/$T-test/manifest.csv"
done
