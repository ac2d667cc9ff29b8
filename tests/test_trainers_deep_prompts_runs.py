"""IVLP, VPT, MaPLe and PromptSRC through train.py: they train, their checkpoints hold the official names,
a checkpoint in the official whole-model format (all of CLIP, class-set buffers, Dassl.pytorch's pickled
scheduler) evaluates to the accuracy of the run it came from, and PromptSRC's prompt average resumes
exactly."""
import re
from pathlib import Path

import pytest
import torch

from clip.tiny import tiny_state_dict
from dassl.utils import load_checkpoint
from tests.helpers import make_pets_world, run_main, write_dassl_pytorch_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_DEPTHS = {  # the tiny CLIP has 2 text and 3 image layers
    "IVLP": ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION", 3],
    "VPT": ["TRAINER.VPT.PROMPT_DEPTH_VISION", 3],
    "MaPLe": ["TRAINER.MAPLE.PROMPT_DEPTH", 2],
    "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 3,
                  "TRAINER.PROMPTSRC.GPA_MEAN", 2, "TRAINER.PROMPTSRC.GPA_STD", 1],
}
REGISTERED = {"IVLP": "VLPromptLearner", "VPT": "prompt_learner", "MaPLe": "MultiModalPromptLearner",
              "PromptSRC": "VLPromptLearner"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_pets_world(tmp_path_factory.mktemp("deep_prompt_runs"))


def argv(world, out, trainer, *extra, epochs=1):
    root, tiny = world
    cfg = (REPO / "configs/trainers" / trainer / "default_cfg.txt").read_text().strip()
    return ["--root", root / "data", "--seed", 1, "--trainer", trainer,
            "--dataset-config-file", REPO / "configs/datasets/oxford_pets.yaml",
            "--config-file", REPO / "configs/trainers" / trainer / f"{cfg}.yaml", "--output-dir", out, *extra,
            "MODEL.BACKBONE.NAME", tiny, "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", epochs,
            "DATALOADER.NUM_WORKERS", 0, "DATASET.NUM_SHOTS", 2, "DATASET.SUBSAMPLE_CLASSES", "base",
            "DATALOADER.TRAIN_X.BATCH_SIZE", 2, *TINY_DEPTHS[trainer]]


def accuracy(text):
    return float(re.findall(r"\* accuracy: ([\d.]+)%", text)[-1])


def official_whole_model_checkpoint(trained, folder, trainer):
    """What the official code saves for these methods: the whole CustomCLIP (CLIP in fp16 included) plus
    the prompt learner's class-set buffers, written by Dassl.pytorch (pickled scheduler)."""
    state = {f"image_encoder.{k[len('visual.'):]}": v for k, v in tiny_state_dict().items()
             if k.startswith("visual.")}
    state.update({f"text_encoder.{k}": v for k, v in tiny_state_dict().items()
                  if k.startswith(("transformer.", "ln_final.", "positional_embedding", "text_projection"))})
    state.update({"logit_scale": torch.tensor(2.6593), "prompt_learner.token_prefix": torch.zeros(2, 1, 64),
                  "prompt_learner.token_suffix": torch.zeros(2, 72, 64)})
    if trainer == "PromptSRC":  # PromptSRC's checkpoints also hold its frozen zero-shot image tower
        state.update({f"prompt_learner.ZS_image_encoder.{k}": v for k, v in state.items()
                      if k.startswith("image_encoder.")})
    state.update(trained)
    state = {k: v.half() for k, v in state.items()}
    return write_dassl_pytorch_checkpoint(folder / REGISTERED[trainer] / "model.pth.tar-1", state, epoch=1)


@pytest.mark.parametrize("trainer", ["IVLP", "VPT", "MaPLe", "PromptSRC"])
def test_trains_saves_official_names_and_an_official_checkpoint_evaluates(world, tmp_path, capsys, trainer):
    out = tmp_path / "run"
    code, stdout, err = run_main(capsys, *argv(world, out, trainer))
    assert code == 0, err
    name = REGISTERED[trainer]
    saved = load_checkpoint(str(out / name / "model.pth.tar-1"))["state_dict"]
    assert all("prompt_learner" in key or "VPT" in key for key in saved)  # no CLIP weights in checkpoints

    half = {k: v.half().float() for k, v in saved.items()}  # what an fp16 official run would hold
    official = official_whole_model_checkpoint(half, tmp_path / "official", trainer)
    code, ours_eval, err = run_main(capsys, *argv(world, tmp_path / "eval_ours", trainer, "--eval-only",
                                                   "--model-dir", out, "--load-epoch", 1))
    assert code == 0, err
    code, official_eval, err = run_main(capsys, *argv(world, tmp_path / "eval_official", trainer, "--eval-only",
                                                       "--model-dir", official.parents[1], "--load-epoch", 1))
    assert code == 0, err
    assert "frozen tensors of the checkpoint (CLIP's weights) are not loaded" in official_eval
    assert "token_prefix, prompt_learner.token_suffix" in official_eval
    assert accuracy(official_eval) == accuracy(ours_eval) == accuracy(stdout)

    # MODEL.INIT_WEIGHTS starts a model from the official checkpoint's prompts (its CLIP tensors are left out)
    code, init_out, err = run_main(capsys, *argv(world, tmp_path / "init", trainer, "--no-train",
                                                 "MODEL.INIT_WEIGHTS", official))
    assert code == 0, err
    assert f'Successfully loaded pretrained weights from "{official}"' in init_out
    discarded = re.search(r"Layers discarded due to unmatched keys or size: (.*)", init_out).group(1)
    assert not any(f"'{key}'" in discarded for key in saved)  # every trained tensor was taken


def test_promptsrc_prompt_average_resumes_exactly(world, tmp_path, capsys):
    """Interrupted after epoch 2 of 3, the rerun resumes with the running average and ends with the same
    checkpoint as the uninterrupted run."""
    whole = tmp_path / "whole"
    code, _, err = run_main(capsys, *argv(world, whole, "PromptSRC", "TRAIN.CHECKPOINT_FREQ", 1, epochs=3))
    assert code == 0, err
    cut = tmp_path / "cut"
    code, _, err = run_main(capsys, *argv(world, cut, "PromptSRC", "TRAIN.CHECKPOINT_FREQ", 1, epochs=3))
    assert code == 0, err
    folder = cut / "VLPromptLearner"
    (folder / "model.pth.tar-3").unlink()
    (folder / "checkpoint").write_text("model.pth.tar-2\n")
    code, out, err = run_main(capsys, *argv(world, cut, "PromptSRC", "TRAIN.CHECKPOINT_FREQ", 1, epochs=3))
    assert code == 0, err
    assert "Resumed from epoch 2" in out
    final_whole = load_checkpoint(str(whole / "VLPromptLearner" / "model.pth.tar-3"))["state_dict"]
    final_cut = load_checkpoint(str(folder / "model.pth.tar-3"))["state_dict"]
    epoch_2 = load_checkpoint(str(folder / "model.pth.tar-2"))["state_dict"]
    for key, value in final_whole.items():
        assert torch.equal(final_cut[key], value), key
    assert any(not torch.equal(epoch_2[k], v) for k, v in final_whole.items())
