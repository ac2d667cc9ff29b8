#!/usr/bin/env bash
# Cross-dataset / domain generalisation source run: train on all 1000 ImageNet classes.
# usage: bash scripts/xd_train.sh [--force] [--rerun-stale] [--allow-code-change] SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
source "$(dirname "$0")/lib.sh"
parse_args "SEED" "$@"
find_configs "$TRAINER" "$CFG" imagenet
[[ "$TRAINER" != ZeroshotCLIP ]] || die "ZeroshotCLIP has nothing to train; run xd_test.sh directly"

DIR="$OUTPUT/imagenet/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED"
set_run_args "$DIR"
ARGS+=(DATASET.NUM_SHOTS "$SHOTS" "${OPTS[@]}")
prepare_run "$DIR" "$TRAIN_END" || exit 0
run_train_py "${ARGS[@]}"
