#!/usr/bin/env bash
# Base-to-new, step 2: evaluate the model trained by base2new_train.sh on the new classes.
# usage: bash scripts/base2new_test.sh [--force] DATASET SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
# Pass the same KEY VALUE options as for training (the last epoch is read from OPTIM.MAX_EPOCH).
source "$(dirname "$0")/lib.sh"
if [[ "${1:-}" == "--force" ]]; then FORCE=1; shift; fi
(( $# >= 2 )) || die "usage: $0 [--force] DATASET SEED [TRAINER] [CFG] [KEY VALUE ...]"
DATASET=$1 SEED=$2
shift 2
TRAINER=MuPL
if (( $# )) && ! is_option_key "$1"; then TRAINER=$1; shift; fi
CFG=$(default_cfg "$TRAINER")
if (( $# )) && ! is_option_key "$1"; then CFG=$1; shift; fi
find_configs "$TRAINER" "$CFG" "$DATASET"

COMMON="$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
MODEL_DIR="$OUTPUT/base2new/train_base/$COMMON"
DIR="$OUTPUT/base2new/test_new/$COMMON"
ARGS=(--root "$DATA" --seed "$SEED" --trainer "$TRAINER"
      --dataset-config-file "$DS_CFG"
      --config-file "$CFG_FILE" --output-dir "$DIR" --eval-only)
if [[ "$TRAINER" != ZeroshotCLIP ]]; then
    require_finished_training "$MODEL_DIR" "bash scripts/base2new_train.sh $DATASET $SEED $TRAINER $CFG $*"
    LOADEP=$(max_epoch "$CFG_FILE" "$@")
    ARGS+=(--model-dir "$MODEL_DIR" --load-epoch "$LOADEP")
fi
prepare_run "$DIR" "$EVAL_END" || exit 0
run_train_py "${ARGS[@]}" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new "$@"
