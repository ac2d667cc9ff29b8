#!/usr/bin/env bash
# Few-shot: train on SHOTS images per class of all classes, test on the full test set.
# usage: bash scripts/fewshot.sh [--force] DATASET SHOTS SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
# Output: $OUTPUT/fewshot/DATASET/shots_SHOTS/TRAINER/CFG/seedSEED (ZeroshotCLIP: evaluation only).
source "$(dirname "$0")/lib.sh"
if [[ "${1:-}" == "--force" ]]; then FORCE=1; shift; fi
(( $# >= 3 )) || die "usage: $0 [--force] DATASET SHOTS SEED [TRAINER] [CFG] [KEY VALUE ...]"
DATASET=$1 SHOTS=$2 SEED=$3
shift 3
TRAINER=MuPL
if (( $# )) && ! is_option_key "$1"; then TRAINER=$1; shift; fi
CFG=$(default_cfg "$TRAINER")
if (( $# )) && ! is_option_key "$1"; then CFG=$1; shift; fi
find_configs "$TRAINER" "$CFG" "$DATASET"

DIR="$OUTPUT/fewshot/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
ARGS=(--root "$DATA" --seed "$SEED" --trainer "$TRAINER"
      --dataset-config-file "$DS_CFG"
      --config-file "$CFG_FILE" --output-dir "$DIR")
MARKER=$TRAIN_END
if [[ "$TRAINER" == ZeroshotCLIP ]]; then
    ARGS+=(--eval-only)
    MARKER=$EVAL_END
fi
prepare_run "$DIR" "$MARKER" || exit 0
run_train_py "${ARGS[@]}" DATASET.NUM_SHOTS "$SHOTS" "$@"
