#!/usr/bin/env bash
# Cross-dataset / domain generalisation source run: train on all 1000 ImageNet classes.
# usage: bash scripts/xd_train.sh [--force] SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
source "$(dirname "$0")/lib.sh"
if [[ "${1:-}" == "--force" ]]; then FORCE=1; shift; fi
(( $# >= 1 )) || die "usage: $0 [--force] SEED [TRAINER] [CFG] [KEY VALUE ...]"
SEED=$1
shift
TRAINER=MuPL
if (( $# )) && ! is_option_key "$1"; then TRAINER=$1; shift; fi
CFG=$(default_cfg "$TRAINER")
if (( $# )) && ! is_option_key "$1"; then CFG=$1; shift; fi
find_configs "$TRAINER" "$CFG" imagenet
[[ "$TRAINER" != ZeroshotCLIP ]] || die "ZeroshotCLIP has nothing to train; run xd_test.sh directly"

DIR="$OUTPUT/imagenet/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED"
prepare_run "$DIR" "$TRAIN_END" || exit 0
run_train_py --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "$DS_CFG" \
    --config-file "$CFG_FILE" --output-dir "$DIR" \
    DATASET.NUM_SHOTS "$SHOTS" "$@"
