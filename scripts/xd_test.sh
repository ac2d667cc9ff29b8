#!/usr/bin/env bash
# Cross-dataset: evaluate the ImageNet-trained model of xd_train.sh on all classes of DATASET.
# usage: bash scripts/xd_test.sh [--force] [--rerun-stale] [--allow-code-change] DATASET SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
source "$(dirname "$0")/lib.sh"
parse_args "DATASET SEED" "$@"
find_configs "$TRAINER" "$CFG" "$DATASET"

MODEL_DIR="$OUTPUT/imagenet/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED"
DIR="$OUTPUT/evaluation/$TRAINER/${CFG}_${SHOTS}shots/$DATASET/seed$SEED"
set_run_args "$DIR"
add_eval_args "$MODEL_DIR" "bash scripts/xd_train.sh $SEED $TRAINER $CFG ${OPTS[*]}"
ARGS+=("${OPTS[@]}")
prepare_run "$DIR" "$EVAL_END" || exit 0
run_train_py "${ARGS[@]}"
