#!/usr/bin/env bash
# The main job on the bundled tiny base. Today: sample the base and measure it with `erase evaluate`
# (the "before" numbers); erasing a concept joins when `erase unlearn` lands.
set -euo pipefail
cd "$(dirname "$0")/.."
ERASE=.venv/bin/erase
OUT=${OUT:-out/demo}
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== erase sample: the tiny base draws what it is asked for =="
$ERASE sample --recipe recipes/tiny-digits.yaml -n 8 --out "$OUT/samples" \
  -p "a red handwritten digit three" -p "a blue handwritten digit seven" -p "a yellow digit" -p "a handwritten digit"
ls "$OUT/samples"/grid-*.png
echo "== erase evaluate: UA / IRA / CRA, CLIP score of the base for the concept 'digit 3' =="
$ERASE evaluate --recipe recipes/tiny-digits.yaml --out "$OUT/evaluate"
echo "open $OUT/evaluate/report.html for the grids"
