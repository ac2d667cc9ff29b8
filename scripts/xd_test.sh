#!/usr/bin/env bash
# Cross-dataset: evaluate the ImageNet-trained model of xd_train.sh on all classes of DATASET.
# usage: bash scripts/xd_test.sh [--force] DATASET SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
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

MODEL_DIR="$OUTPUT/imagenet/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED"
DIR="$OUTPUT/evaluation/$TRAINER/${CFG}_${SHOTS}shots/$DATASET/seed$SEED"
ARGS=(--root "$DATA" --seed "$SEED" --trainer "$TRAINER"
      --dataset-config-file "$DS_CFG"
      --config-file "$CFG_FILE" --output-dir "$DIR" --eval-only)
if [[ "$TRAINER" != ZeroshotCLIP ]]; then
    require_finished_training "$MODEL_DIR" "bash scripts/xd_train.sh $SEED $TRAINER $CFG $*"
    LOADEP=$(max_epoch "$CFG_FILE" "$@")
    ARGS+=(--model-dir "$MODEL_DIR" --load-epoch "$LOADEP")
fi
prepare_run "$DIR" "$EVAL_END" || exit 0
run_train_py "${ARGS[@]}" "$@"
