#!/usr/bin/env bash
# The main job on the bundled tiny base. Today: sample the base and measure it; erasing lands with `unlearn`.
set -euo pipefail
cd "$(dirname "$0")/.."
ERASE=.venv/bin/erase
OUT=${OUT:-out/demo}
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== erase sample: the tiny base draws what it is asked for (grids in $OUT/samples) =="
$ERASE sample --recipe recipes/tiny-digits.yaml -n 8 --out "$OUT/samples" \
  -p "a red handwritten digit three" -p "a blue handwritten digit seven" -p "a yellow digit" -p "a handwritten digit"
ls "$OUT/samples"/grid-*.png
echo "== quality of the tiny base, judged by the shipped classifier (bench/tiny_quality.py) =="
.venv/bin/python -m bench.tiny_quality --seeds 1
