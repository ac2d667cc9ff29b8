#!/usr/bin/env bash
# Base-to-new, step 1: train on the base classes (the final test in log.txt is the base accuracy).
# usage: bash scripts/base2new_train.sh [--force] DATASET SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
# ZeroshotCLIP is evaluated (--eval-only) on the base classes instead.
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

DIR="$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
ARGS=(--root "$DATA" --seed "$SEED" --trainer "$TRAINER"
      --dataset-config-file "$DS_CFG"
      --config-file "$CFG_FILE" --output-dir "$DIR")
MARKER=$TRAIN_END
if [[ "$TRAINER" == ZeroshotCLIP ]]; then
    ARGS+=(--eval-only)
    MARKER=$EVAL_END
fi
prepare_run "$DIR" "$MARKER" || exit 0
run_train_py "${ARGS[@]}" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "$@"
