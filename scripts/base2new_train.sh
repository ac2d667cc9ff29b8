#!/usr/bin/env bash
# Base-to-new, step 1: train on the base classes (the final test in log.txt is the base accuracy).
# usage: bash scripts/base2new_train.sh [--force] [--rerun-stale] [--allow-code-change] DATASET SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
# ZeroshotCLIP is evaluated (--eval-only) on the base classes instead.
source "$(dirname "$0")/lib.sh"
parse_args "DATASET SEED" "$@"
find_configs "$TRAINER" "$CFG" "$DATASET"

DIR="$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
set_run_args "$DIR"
add_train_args
ARGS+=(DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "${OPTS[@]}")
prepare_run "$DIR" "$MARKER" || exit 0
run_train_py "${ARGS[@]}"
