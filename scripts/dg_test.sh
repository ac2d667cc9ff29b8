#!/usr/bin/env bash
# Domain generalisation: the ImageNet-trained model of xd_train.sh on an ImageNet variant
# (imagenetv2, imagenet_sketch, imagenet_a, imagenet_r); same output folders as xd_test.sh.
# usage: bash scripts/dg_test.sh [--force] [--rerun-stale] [--allow-code-change] DATASET SEED [TRAINER=MuPL] [CFG] [KEY VALUE ...]
set -euo pipefail
DATASET=""
for argument in "$@"; do
    [[ "$argument" == --* ]] || { DATASET=$argument; break; }
done
case "$DATASET" in
    imagenetv2 | imagenet_sketch | imagenet_a | imagenet_r) ;;
    *) echo "Error: dg_test.sh takes an ImageNet variant (imagenetv2, imagenet_sketch, imagenet_a, imagenet_r), got '$DATASET'" >&2
       exit 1 ;;
esac
exec bash "$(dirname "$0")/xd_test.sh" "$@"
