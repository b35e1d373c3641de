#!/usr/bin/env bash
# The main job on the bundled tiny base: erase the digit 3 with the default method (siss), then print
# `erase evaluate`'s before/after table (the base beside the delta: UA, IRA, CRA, cra_forget, CLIP score, FID,
# KID, fid_forget). The plain command starts siss from its shipped tiny preset (recipes/tiny-digit-siss.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
ERASE=.venv/bin/erase
OUT=${OUT:-out/demo}
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== erase unlearn: erase 'digit 3' from the tiny base with siss (samples its training data on a first run) =="
$ERASE unlearn --concept "digit 3" --out "$OUT/no-three"
echo "== erase evaluate: before (base) and after (delta) =="
$ERASE evaluate --concept "digit 3" --delta "$OUT/no-three" --out "$OUT/evaluate"
echo "== erase sample: prompts of your own through the delta =="
$ERASE sample -n 8 --out "$OUT/after" --delta "$OUT/no-three" \
  -p "a red handwritten digit three" -p "a blue handwritten digit seven"
echo "open $OUT/evaluate/report.html for the base's and the delta's grids side by side;" \
  "$OUT/no-three/train_plot.png for the training curves"
