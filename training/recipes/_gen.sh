# Sourced by the recipes: gen TASK OUT_DIR N SEED [extra `scanqc data generate` options] - generates a
# synthetic data set unless OUT_DIR already has a manifest (re-running a recipe reuses its data).
gen() { [ -f "$2/manifest.csv" ] || scanqc data generate --task "$1" --n "$3" --out "$2" --seed "$4" --workers 2 "${@:5}"; }
