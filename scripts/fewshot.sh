#!/usr/bin/env bash
# Few-shot: train on SHOTS images per class of all classes, test on the full test set.
# usage: bash scripts/fewshot.sh [--force] [--rerun-stale] [--allow-code-change] DATASET SHOTS SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
# Output: $OUTPUT/fewshot/DATASET/shots_SHOTS/TRAINER/CFG/seedSEED (ZeroshotCLIP: evaluation only).
source "$(dirname "$0")/lib.sh"
parse_args "DATASET SHOTS SEED" "$@"
find_configs "$TRAINER" "$CFG" "$DATASET"

DIR="$OUTPUT/fewshot/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
set_run_args "$DIR"
add_train_args
ARGS+=(DATASET.NUM_SHOTS "$SHOTS" "${OPTS[@]}")
prepare_run "$DIR" "$MARKER" || exit 0
run_train_py "${ARGS[@]}"
