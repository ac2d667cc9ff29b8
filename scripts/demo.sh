#!/usr/bin/env bash
# The whole base-to-new pipeline on the embedded ToyShapes world, on a CPU, through the real scripts:
# draw the dataset, load the shipped tiny CLIP (pretrained on the toy world by tools/pretrain_tiny_clip.py),
# then zero-shot CLIP, CoOp, CoCoOp, KgCoOp, ProGrad, IVLP, VPT, MaPLe, PromptSRC and MuPL train on the base
# classes and are tested on the new ones,
# and the results report (tables + figure) is printed and saved. Only the backbone, the dataset, the image
# size, the epochs (and batch sizes) and, for the tiny CLIP's 3 layers, the prompt depths differ from a real
# benchmark run. See docs/demo.md.
# Environment: PYTHON, DEMO_DIR (default output/demo), DEMO_WEIGHTS, DEMO_QUICK=1 (CI: fewer images, 1 epoch),
# DEMO_SEEDS (default "1"; "1 2 3" runs three seeds and reports mean and std), DEMO_TRAINERS (default: all ten).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEMO_DIR=${DEMO_DIR:-output/demo}
WEIGHTS=${DEMO_WEIGHTS:-toyworld/toyclip-seed0.pt}
if [[ "${DEMO_QUICK:-0}" == 1 ]]; then
    PER_CLASS=(6 2 4); SHOTS=4; EPOCHS=1; COOP_EPOCHS=2
else
    PER_CLASS=(24 8 16); SHOTS=16; EPOCHS=5; COOP_EPOCHS=25
fi
read -r -a SEEDS <<< "${DEMO_SEEDS:-1}"
export DATA="$DEMO_DIR/data" OUTPUT="$DEMO_DIR/output" SHOTS PYTHON
# A demo run made by other code (or another config) is rerun, not refused: each takes seconds.
export RERUN_STALE=${RERUN_STALE:-1}

echo "== 1/4 ToyShapes dataset (${PER_CLASS[*]} train/val/test images per class)"
"$PYTHON" -m toyworld.make_dataset --root "$DATA" --per-class "${PER_CLASS[@]}"
echo "== 2/4 tiny CLIP pretrained on the toy world: $WEIGHTS"
"$PYTHON" -m tools.pretrain_tiny_clip --out "$WEIGHTS"

# Finished runs are skipped on a rerun (the scripts' usual behaviour), so runs made with another dataset
# or other weights are moved aside, never reported as this world's and never deleted.
INPUTS="$(cat "$DATA/toy_shapes/world.json"; sha256sum "$WEIGHTS" | cut -d' ' -f1)"
if [[ -d "$OUTPUT" && "$(cat "$OUTPUT/demo-inputs.txt" 2>/dev/null)" != "$INPUTS" ]]; then
    STALE="$OUTPUT.stale-$(date +%Y%m%d-%H%M%S)"
    echo "Runs in $OUTPUT were made with another ToyShapes drawing or other weights: moved to $STALE"
    mv "$OUTPUT" "$STALE"
fi
mkdir -p "$OUTPUT"
printf '%s\n' "$INPUTS" > "$OUTPUT/demo-inputs.txt"

COMMON=(MODEL.BACKBONE.NAME "$WEIGHTS" INPUT.SIZE "(32, 32)" DATALOADER.NUM_WORKERS 0
        DATALOADER.TEST.BATCH_SIZE 100 TRAIN.PRINT_FREQ 40)
read -r -a TRAINERS <<< "${DEMO_TRAINERS:-ZeroshotCLIP CoOp CoCoOp KgCoOp ProGrad IVLP VPT MaPLe PromptSRC MuPL}"
# What differs from each recipe on the toy world: epochs and batch (CoOp's family trains at batch 8 for
# CoOp's epochs; the batch-4 methods keep batch 4), and prompt depths within the tiny CLIP's 3 layers.
demo_options() {
    case $1 in
        ZeroshotCLIP) OPTS=() ;;
        CoOp | KgCoOp | ProGrad) OPTS=(OPTIM.MAX_EPOCH "$COOP_EPOCHS" DATALOADER.TRAIN_X.BATCH_SIZE 8) ;;
        IVLP) OPTS=(OPTIM.MAX_EPOCH "$EPOCHS" TRAINER.IVLP.PROMPT_DEPTH_TEXT 3 TRAINER.IVLP.PROMPT_DEPTH_VISION 3) ;;
        VPT) OPTS=(OPTIM.MAX_EPOCH "$EPOCHS" TRAINER.VPT.PROMPT_DEPTH_VISION 3) ;;
        MaPLe) OPTS=(OPTIM.MAX_EPOCH "$EPOCHS" TRAINER.MAPLE.PROMPT_DEPTH 3) ;;
        PromptSRC) OPTS=(OPTIM.MAX_EPOCH "$EPOCHS" TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT 3
                         TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION 3 TRAINER.PROMPTSRC.GPA_MEAN $(( EPOCHS * 3 / 4 + 1 ))
                         TRAINER.PROMPTSRC.GPA_STD 1) ;;
        *) OPTS=(OPTIM.MAX_EPOCH "$EPOCHS") ;;
    esac
}
echo "== 3/4 base-to-new, seed(s) ${SEEDS[*]}: ${TRAINERS[*]}"
for SEED in "${SEEDS[@]}"; do
    for TRAINER in "${TRAINERS[@]}"; do
        demo_options "$TRAINER"
        echo "-- $TRAINER, seed $SEED"
        bash scripts/base2new_train.sh toy_shapes "$SEED" "$TRAINER" "${COMMON[@]}" "${OPTS[@]}"
        bash scripts/base2new_test.sh toy_shapes "$SEED" "$TRAINER" "${COMMON[@]}" "${OPTS[@]}"
    done
done

echo "== 4/4 results"
"$PYTHON" -m tools.report "$OUTPUT" --trainers "${TRAINERS[@]}" --seeds "${SEEDS[@]}" --out "$DEMO_DIR/report"
