#!/usr/bin/env bash
# Base-to-new, step 2: evaluate the model trained by base2new_train.sh on the new classes.
# usage: bash scripts/base2new_test.sh [--force] [--rerun-stale] [--allow-code-change] DATASET SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
# Pass the same KEY VALUE options as for training (the last epoch is read from OPTIM.MAX_EPOCH).
source "$(dirname "$0")/lib.sh"
parse_args "DATASET SEED" "$@"
find_configs "$TRAINER" "$CFG" "$DATASET"

COMMON="$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
MODEL_DIR="$OUTPUT/base2new/train_base/$COMMON"
DIR="$OUTPUT/base2new/test_new/$COMMON"
set_run_args "$DIR"
add_eval_args "$MODEL_DIR" "bash scripts/base2new_train.sh $DATASET $SEED $TRAINER $CFG ${OPTS[*]}"
ARGS+=(DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new "${OPTS[@]}")
prepare_run "$DIR" "$EVAL_END" || exit 0
run_train_py "${ARGS[@]}"
