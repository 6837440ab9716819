# Sourced by the contrast_phase 2.2.0+ recipes (abdominal CT generator, one CPU thread per job).
# abdomen_draws DATA: the four draw sets at the generator's own resolution (a folder with a manifest is reused):
#   train-abd (seed 0, 320), train2-abd (seed 3, 480), val-abd (seed 2000, 120) and test-abd (seed 1000, 200),
#   the last two of the test variant (habitus, organ size, noise outside the training ranges).
abdomen_draws() {
  local data=${1:?data dir}
  _abd() { [ -f "$1/manifest.csv" ] || nice -n 10 scanqc data generate --task contrast_phase --generator abdomen \
    --workers 1 --n "$2" --seed "$3" --out "$1" "${@:4}"; }
  _abd "$data/train-abd" 320 0
  _abd "$data/train2-abd" 480 3
  _abd "$data/val-abd" 120 2000 --variant test
  _abd "$data/test-abd" 200 1000 --variant test
}
# held_out VERSION DATA SET...: `scanqc evaluate` of contrast_phase VERSION alone (a models folder holding only it;
# it names its localisation network) on DATA/SET/manifest.csv -> DATA/eval-VERSION-SET.
held_out() {
  local version=${1:?version} data=${2:?data dir} models="$2/m${1//./}"
  shift 2
  mkdir -p "$models/contrast_phase" && rm -rf "$models/contrast_phase/$version" \
    && cp -r "models/contrast_phase/$version" "$models/contrast_phase/"
  for set in "$@"; do
    scanqc evaluate --manifest "$data/$set/manifest.csv" --task contrast_phase --split all --models "$models" \
      --out "$data/eval-$version-$set"
  done
}
