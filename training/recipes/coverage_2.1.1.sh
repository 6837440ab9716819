#!/usr/bin/env bash
# Reproduce coverage 2.1.1 (2026-12-01, session 10; issue 19) from the repository root: coverage 2.1.0's brain-mask
# network unchanged, the superior cut fraction lowered from 0.06 (middle of the validation plateau 0.01-0.105) to
# 0.03. Shallow vertex cuts (3-6 mm of brain) read 0.03-0.10 of the largest brain section on the cross-simulator's
# heads (seed 2, looked at to choose this) and were passed; the training generator's MNI-based vertex is flatter
# (its cuts never read below 0.106), and every full crop of both families reads 0 at the superior end.
# Decided on a cross-simulator seed generated afterwards (seed 3); own held-out heads (seed 4242) unchanged.
# Usage: coverage_2.1.1.sh DATA_DIR
set -euo pipefail
DATA=${1:?data dir}
python -m scanqc.training.brain_mask rethreshold --source models/coverage/2.1.0 --out models --version 2.1.1 \
  --superior 0.03 --reason "shallow vertex cuts (3-6 mm of brain) read 0.03-0.10 of the largest section on the cross-simulator's heads (seed 2, looked at) while every full crop reads 0 at the superior end in both families; 0.03 lies on the validation plateau 0.01-0.105"
[ -f "$DATA/crosssim-coverage-3/manifest.csv" ] || scanqc evaluate crosssim --task coverage --n 120 --seed 3 \
  --out "$DATA/crosssim-coverage-3" --workers 2
scanqc data generate --task coverage --anatomy head --variant test --n 300 --seed 4242 --out "$DATA/cov-test4242" --workers 2
scanqc evaluate --manifest "$DATA/cov-test4242/manifest.csv" --task coverage --split all --out "$DATA/eval-cov-own"
scanqc evaluate --manifest "$DATA/crosssim-coverage-3/manifest.csv" --task coverage --split all --out "$DATA/eval-cov-cs3"
scanqc models promote coverage 2.1.1 --manifest "$DATA/crosssim-coverage-3/manifest.csv" --split all
