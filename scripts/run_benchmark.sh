#!/usr/bin/env bash
# A whole benchmark: every dataset x seeds 1-3, train then test. Rerun it to resume: finished runs are
# skipped, an interrupted one resumes from its last checkpoint.
# usage: bash scripts/run_benchmark.sh {base2new|xd|dg|fewshot} [TRAINER=MuPL] [CFG] [KEY VALUE ...]
# Environment: DATASETS, SEEDS and (fewshot) SHOT_LIST narrow the loops, e.g. DATASETS="oxford_pets dtd".
set -euo pipefail
HERE=$(dirname "$0")
BENCHMARK=${1:-}
shift || true

BASE2NEW_DATASETS="imagenet caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
XD_TARGETS="caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
DG_TARGETS="imagenetv2 imagenet_sketch imagenet_a imagenet_r"
SEEDS=${SEEDS:-1 2 3}
TRAINER=${1:-MuPL}
if [[ "$TRAINER" == *.* ]]; then TRAINER=MuPL; else shift || true; fi

train_source_models() {
    [[ "$TRAINER" == ZeroshotCLIP ]] && return
    for seed in $SEEDS; do bash "$HERE/xd_train.sh" "$seed" "$TRAINER" "$@"; done
}

case "$BENCHMARK" in
    base2new)
        for dataset in ${DATASETS:-$BASE2NEW_DATASETS}; do
            for seed in $SEEDS; do
                bash "$HERE/base2new_train.sh" "$dataset" "$seed" "$TRAINER" "$@"
                bash "$HERE/base2new_test.sh" "$dataset" "$seed" "$TRAINER" "$@"
            done
        done ;;
    xd | dg)
        train_source_models "$@"
        targets=$XD_TARGETS
        [[ "$BENCHMARK" == dg ]] && targets=$DG_TARGETS
        for dataset in ${DATASETS:-$targets}; do
            for seed in $SEEDS; do bash "$HERE/xd_test.sh" "$dataset" "$seed" "$TRAINER" "$@"; done
        done ;;
    fewshot)
        for dataset in ${DATASETS:-$BASE2NEW_DATASETS}; do
            for shots in ${SHOT_LIST:-1 2 4 8 16}; do
                for seed in $SEEDS; do bash "$HERE/fewshot.sh" "$dataset" "$shots" "$seed" "$TRAINER" "$@"; done
            done
        done ;;
    *)
        echo "usage: $0 {base2new|xd|dg|fewshot} [TRAINER] [CFG] [KEY VALUE ...]" >&2
        exit 1 ;;
esac
echo "Benchmark $BENCHMARK done for $TRAINER"
