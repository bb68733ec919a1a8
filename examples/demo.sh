#!/usr/bin/env bash
# The demo behind `make demo`: build a table, look at it, train a fused model, evaluate it, predict.
# AV-Digits when the real data is there ($POLYFUSE_DATA or ../shared/data), else the synthetic table.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-demo_out}
DATA=${POLYFUSE_DATA:-../shared/data}
EPOCHS=${DEMO_EPOCHS:-10}

if [ -d "$DATA/mnist" ] && [ -d "$DATA/fsdd/recordings" ]; then
  echo "== building AV-Digits from $DATA"
  $BIN/polyfuse datasets build av-digits --source "$DATA" --out "$OUT/av-digits"
  TABLE="$OUT/av-digits/av_digits.csv"
else
  echo "== $DATA not found: building the synthetic table instead"
  $BIN/polyfuse datasets build synthetic --out "$OUT/synthetic"
  TABLE="$OUT/synthetic/synthetic.csv"
fi

echo "== polyfuse data inspect $TABLE"
$BIN/polyfuse data inspect "$TABLE"

echo "== polyfuse data preview $TABLE"
$BIN/polyfuse data preview "$TABLE" --batch-size 8

echo "== polyfuse init → $OUT/config.yaml"
$BIN/polyfuse init "$TABLE" --target label -o "$OUT/config.yaml" --force

echo "== polyfuse train ($EPOCHS epochs)"
$BIN/polyfuse train "$OUT/config.yaml" -o "$OUT/run" --epochs "$EPOCHS"

echo "== polyfuse evaluate on the test split"
$BIN/polyfuse evaluate "$OUT/run/model" "$TABLE" --split test -o "$OUT/test_metrics.json"

echo "== polyfuse predict on the test split → $OUT/predictions.csv (first rows)"
$BIN/polyfuse predict "$OUT/run/model" "$TABLE" --split test -o "$OUT/predictions.csv"
head -n 6 "$OUT/predictions.csv" | cut -c1-120
