#!/usr/bin/env bash
# The demo behind `make demo`: build a table, look at it, show a batch.
# AV-Digits when the real data is there ($POLYFUSE_DATA or ../shared/data), else the synthetic table.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-demo_out}
DATA=${POLYFUSE_DATA:-../shared/data}

if [ -d "$DATA/mnist" ] && [ -d "$DATA/fsdd/recordings" ]; then
  echo "== building AV-Digits from $DATA"
  $BIN/polyfuse datasets build av-digits --source "$DATA" --out "$OUT/av-digits"
  TABLE="$OUT/av-digits/av_digits.csv"
  PRESET=(--preset av-digits)
else
  echo "== $DATA not found: building the synthetic table instead"
  $BIN/polyfuse datasets build synthetic --out "$OUT/synthetic"
  TABLE="$OUT/synthetic/synthetic.csv"
  PRESET=()
fi

echo "== polyfuse data inspect $TABLE"
$BIN/polyfuse data inspect "$TABLE"

echo "== polyfuse data preview $TABLE"
$BIN/polyfuse data preview "$TABLE" "${PRESET[@]}" --batch-size 8
