"""The catalogue of bad inputs: one clear message, a non-zero exit, and earlier results untouched."""
import errno
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Tuple

import PIL.Image
import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.tensorboard import SummaryWriter

import train
from clip import clip as clip_module
from clip.tiny import save_tiny_clip, tiny_state_dict
from dassl.utils import CheckpointError, check_checkpoint, load_checkpoint, read_image, save_checkpoint
from dassl.utils import logger as logger_module
from datasets.base import DatasetError
from tests.fake_trees import make_fake_oxford_pets, make_split_tree, write_image
from tests.helpers import make_pets_world, run_main, write_dassl_pytorch_checkpoint
from tests.test_datasets import load as load_dataset

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_pets_world(tmp_path_factory.mktemp("bad_inputs"), n_test=2)


def args_for(world, out, trainer="MuPL", *extra, data=None):
    root, tiny = world
    cfg = REPO / "configs" / "trainers" / trainer / "vit_b16_c4_ep10_batch1_ctxv1.yaml"
    return ["--root", data or root / "data", "--seed", 1, "--trainer", trainer,
            "--dataset-config-file", REPO / "configs/datasets/oxford_pets.yaml", "--config-file", cfg,
            "--output-dir", out, *extra, "MODEL.BACKBONE.NAME", tiny, "INPUT.SIZE", "(32, 32)",
            "OPTIM.MAX_EPOCH", 1, "DATALOADER.NUM_WORKERS", 0, "DATASET.NUM_SHOTS", 1,
            "DATASET.SUBSAMPLE_CLASSES", "base"]


@pytest.fixture(scope="module")
def finished(world):
    """A finished MuPL run and its byte snapshot; every test checks it is left exactly as it was."""
    out = world[0] / "finished"
    assert train.main(train.build_parser().parse_args([str(a) for a in args_for(world, out)])) == 0
    sys.stdout.close()
    return out, snapshot(out)


@pytest.fixture
def untouched(finished):
    yield finished[0]
    assert snapshot(finished[0]) == finished[1]


def test_missing_data_root(world, untouched, tmp_path, capsys):
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o", data=tmp_path / "nowhere"))
    assert code == 1 and "does not exist" in err and "--root" in err


def test_missing_dataset_folder(world, untouched, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o", data=tmp_path / "empty"))
    assert code == 1 and "python -m datasets.prepare oxford_pets" in err


def test_malformed_split_json(world, untouched, tmp_path, capsys):
    make_fake_oxford_pets(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    (tmp_path / "data/oxford_pets/split_zhou_OxfordPets.json").write_text("{ broken")
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o", data=tmp_path / "data"))
    assert code == 1 and "not valid JSON" in err


def test_image_listed_but_absent(world, untouched, tmp_path, capsys):
    folder = make_fake_oxford_pets(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    next((folder / "images").iterdir()).unlink()
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o", data=tmp_path / "data"))
    assert code == 1 and "1 of 12 images listed" in err


def test_corrupt_image_file(world, untouched, tmp_path, capsys):
    folder = make_fake_oxford_pets(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    victim = sorted((folder / "images").iterdir())[0]
    victim.write_bytes(b"not an image")
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o", data=tmp_path / "data"))
    assert code == 1 and f'Cannot read image "{victim}"' in err


def test_class_without_training_image(world, untouched, tmp_path, capsys):
    folder = make_fake_oxford_pets(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    split_file = folder / "split_zhou_OxfordPets.json"
    split = json.loads(split_file.read_text())
    split["train"] = [item for item in split["train"] if item[1] != 1]
    split_file.write_text(json.dumps(split))
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o", data=tmp_path / "data"))
    assert code == 1 and "have no training image: 1 (american bulldog)" in err


@pytest.mark.parametrize("opts, message", [(["OPTIM.MAX_EPOCHS", "2"], "OPTIM.MAX_EPOCHS"),
                                           (["OPTIM.MAX_EPOCH", "two"], "OPTIM.MAX_EPOCH")])
def test_config_key_typo_and_wrong_type(world, untouched, tmp_path, capsys, opts, message):
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o"), *opts)
    assert code == 2 and message in err and not (tmp_path / "o").exists()


def test_unknown_trainer(world, untouched, tmp_path, capsys):
    argv = args_for(world, tmp_path / "o")
    argv[argv.index("MuPL")] = "MuPl"
    argv[argv.index("--config-file") + 1] = REPO / "configs/trainers/MuPL/vit_b16_c4_ep10_batch1_ctxv1.yaml"
    code, _, err = run_main(capsys, *argv)
    assert code == 2 and 'Do you mean "MuPL"?' in err and not (tmp_path / "o").exists()


def test_missing_clip_weights_offline(world, untouched, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(clip_module._MODELS, "ViT-B/16", f"http://127.0.0.1:9/clip/models/{'0' * 64}/ViT-B-16.pt")
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o"), "MODEL.BACKBONE.NAME", "ViT-B/16",
                            "INPUT.SIZE", "(224, 224)")
    assert code == 1 and "put it at" in err and str(tmp_path / "cache" / "ViT-B-16.pt") in err


def test_corrupt_weights_file(world, untouched, tmp_path, capsys):
    bad = tmp_path / "ViT-B-16.pt"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o"), "MODEL.BACKBONE.NAME", bad)
    assert code == 1 and f"Cannot read CLIP weights from {bad}" in err


def test_checkpoint_of_another_trainer(world, finished, untouched, tmp_path, capsys):
    out = tmp_path / "o"
    argv = args_for(world, out, "CoCoOp", "--eval-only", "--model-dir", finished[0], "--load-epoch", 1)
    code, _, err = run_main(capsys, *argv)
    assert code == 1 and "written by trainer MuPL, but this run is CoCoOp" in err


def test_eval_only_without_model_dir(world, untouched, tmp_path, capsys):
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o", "MuPL", "--eval-only"))
    assert code == 2 and "--eval-only needs --model-dir" in err and not (tmp_path / "o").exists()


def test_load_epoch_that_does_not_exist(world, finished, untouched, tmp_path, capsys):
    argv = args_for(world, tmp_path / "o", "MuPL", "--eval-only", "--model-dir", finished[0], "--load-epoch", 7)
    code, _, err = run_main(capsys, *argv)
    assert code == 1 and "model.pth.tar-7" in err and "saved epochs there: [1] (see --load-epoch)" in err


def test_base_model_tested_on_all_classes_notes_the_class_change(world, finished, untouched, tmp_path, capsys):
    argv = args_for(world, tmp_path / "o", "MuPL", "--eval-only", "--model-dir", finished[0], "--load-epoch", 1)
    argv[-1] = "all"  # DATASET.SUBSAMPLE_CLASSES
    code, out, _ = run_main(capsys, *argv)
    assert code == 0
    assert "trained on OxfordPets (2 classes, base); this run evaluates on OxfordPets (4 classes, all)" in out


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    state = {"state_dict": {"w": torch.ones(2)}, "epoch": 1}
    save_checkpoint(state, str(tmp_path))
    before = snapshot(tmp_path)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="is the disk full"):
        save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, str(tmp_path))
    assert snapshot(tmp_path) == before


class RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/mupl-pickle-ran"),))


def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    marker = Path("/tmp/mupl-pickle-ran")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "model.pth.tar-1"
    with open(evil, "wb") as handle:
        pickle.dump({"state_dict": RunsCode()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        load_checkpoint(str(evil))
    assert not marker.exists()


# --- second round: each class of bad input gets one line, a non-zero exit, earlier results untouched ---

def assert_one_line(err, *fragments, out=None):
    """stderr holds exactly one line, with every fragment; it also ends the run's log when one exists."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert all(str(fragment) in lines[0] for fragment in fragments), lines[0]
    if out is not None and (Path(out) / "log.txt").exists():
        assert (Path(out) / "log.txt").read_text().splitlines()[-1] == lines[0]
    return lines[0]


class RunsCodeWhenScriptLoaded(torch.nn.Module):
    """A TorchScript module whose ``__setstate__``, run by torch.jit.load, creates the file ``marker``."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.payload = torch.zeros(1)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        self.payload = torch.from_file(self.marker, True, 1)  # shared=True creates the file


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_torchscript_weights_file_that_is_not_official_never_runs(world, untouched, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    archive = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(RunsCodeWhenScriptLoaded(str(marker))), str(archive))
    torch.jit.load(str(archive))  # the hazard is real: torch.jit.load runs the archive's code
    assert marker.exists()
    marker.unlink()
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *args_for(world, out), "MODEL.BACKBONE.NAME", archive)
    assert code == 1 and not marker.exists()
    assert_one_line(err, f"{archive} is a TorchScript archive that matches no official CLIP checksum",
                    "torch.jit.load(", ".state_dict()", out=out)


def test_weights_file_with_a_damaged_block_is_refused(world, untouched, tmp_path, capsys):
    damaged = tmp_path / "tiny.pt"
    data = bytearray(Path(world[1]).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)  # loads silently as zeros without the CRC check
    damaged.write_bytes(data)
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *args_for(world, out), "MODEL.BACKBONE.NAME", damaged)
    assert code == 1
    assert_one_line(err, f"{damaged} is corrupt: the CRC-32 of its entry", "download the file again", out=out)


def test_pickled_weights_are_refused_without_suggesting_to_turn_weights_only_off(world, untouched, tmp_path,
                                                                               capsys):
    marker = Path("/tmp/mupl-pickle-ran")
    marker.unlink(missing_ok=True)
    weights = tmp_path / "weights.pt"
    torch.save({"text_projection": RunsCode()}, weights)
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "o"), "MODEL.BACKBONE.NAME", weights)
    assert code == 1 and not marker.exists()
    line = assert_one_line(err, f"Cannot read CLIP weights from {weights} as tensors only", "Unsupported global")
    assert "weights_only" not in line and "False" not in line


# The few-shot cache: the split is the truth; a cached draw that disagrees is dropped and drawn again.

def draw(root, capsys):
    """The 2-shot draw of seed 1 (as train.py makes it: seeded first), and what it printed."""
    dataset = load_dataset(root, "OxfordPets", shots=2, seed=1)
    picked = [(d.impath, d.label, d.classname) for d in dataset.train_x + dataset.val]
    return picked, capsys.readouterr().out


def first_train_row_of_class(rows, label):
    return next(index for index, row in enumerate(rows) if row[1] == label)


def rename_class_in_cache(cache, split):
    cache["train"][0][2] = "edited name"


def list_a_test_image(cache, split):
    rel, label, name = split["test"][0]
    cache["train"][first_train_row_of_class(cache["train"], label)] = ["images/" + rel, label, name]


def out_of_range_label(cache, split):
    cache["train"][0][1] = 99


def string_label(cache, split):
    cache["train"][0][1] = str(cache["train"][0][1])


def entry_listed_twice(cache, split):
    cache["train"][1] = cache["train"][0]


def entry_missing(cache, split):
    del cache["val"][0]


def rename_class_in_split(cache, split):
    for rows in split.values():
        for row in rows:
            if row[1] == 1:
                row[2] = "renamed breed"


@pytest.mark.parametrize("edit, disagreement", [
    (rename_class_in_cache, "is not in the split's train list with that label and name"),
    (list_a_test_image, "is not in the split's train list with that label and name"),
    (out_of_range_label, "is not in the split's train list with that label and name"),
    (string_label, "is not [path, int label, class name]"),
    (entry_listed_twice, "is listed twice"),
    (entry_missing, "val entries, the split gives 2"),
    (rename_class_in_split, "is not in the split's train list with that label and name"),
])
def test_fewshot_cache_that_disagrees_with_the_split_is_drawn_again(tmp_path, capsys, edit, disagreement):
    folder = make_fake_oxford_pets(tmp_path, n_train=5, n_val=3, n_test=2, size=8)
    draw(tmp_path, capsys)
    cache_file = folder / "split_fewshot" / "mupl_shot_2-seed_1.json"
    split_file = folder / "split_zhou_OxfordPets.json"
    cache, split = json.loads(cache_file.read_text()), json.loads(split_file.read_text())
    edit(cache, split)
    cache_file.write_text(json.dumps(cache))
    split_file.write_text(json.dumps(split))

    redrawn, printed = draw(tmp_path, capsys)
    warning = [line for line in printed.splitlines() if line.startswith("Warning: few-shot cache")]
    assert len(warning) == 1 and str(cache_file) in warning[0] and disagreement in warning[0]
    cache_file.unlink()
    assert redrawn == draw(tmp_path, capsys)[0]  # the images a run without any cache draws
    assert "Warning" not in draw(tmp_path, capsys)[1]  # the rewritten cache agrees with the split


def test_fewshot_cache_of_an_emptied_train_list_fails_with_the_empty_split_error(tmp_path, capsys):
    folder = make_fake_oxford_pets(tmp_path, n_train=3, n_val=1, n_test=1, size=8)
    draw(tmp_path, capsys)
    split_file = folder / "split_zhou_OxfordPets.json"
    split = json.loads(split_file.read_text())
    split["train"] = []
    split_file.write_text(json.dumps(split))
    with pytest.raises(DatasetError, match="The few-shot training set of .* is empty"):
        draw(tmp_path, capsys)
    assert "disagrees with the split" in capsys.readouterr().out


def test_labels_sharing_a_class_name_are_warned(tmp_path, capsys):
    make_split_tree(tmp_path / "oxford_pets", "images", "split_zhou_OxfordPets.json", ["pug", "beagle", "Pug"],
                    (1, 1, 1))
    load_dataset(tmp_path, "OxfordPets")
    assert ("Warning: labels 0, 2 share the class name 'Pug' / 'pug', so their prompts are the same"
            in capsys.readouterr().out)


# Config values: refused in one place before anything is built or written (exit 2, no folder).

@pytest.mark.parametrize("opts, fragments", [
    (["DATALOADER.TRAIN_X.BATCH_SIZE", "0"], ["DATALOADER.TRAIN_X.BATCH_SIZE is 0", ">= 1"]),
    (["DATALOADER.TEST.BATCH_SIZE", "0"], ["DATALOADER.TEST.BATCH_SIZE is 0", ">= 1"]),
    (["DATASET.NUM_SHOTS", "-2"], ["DATASET.NUM_SHOTS is -2", "-1 / 0 for all images"]),
    (["OPTIM.MAX_EPOCH", "0"], ["OPTIM.MAX_EPOCH is 0", ">= 1 for a training run"]),
    (["OPTIM.MAX_EPOCH", "-3"], ["OPTIM.MAX_EPOCH is -3", ">= 1 for a training run"]),
    (["DATALOADER.NUM_WORKERS", "-1"], ["DATALOADER.NUM_WORKERS is -1", ">= 0"]),
    (["MODEL.BACKBONE.NAME", "ViT-L/14@336px"], ["INPUT.SIZE is (32, 32)", "(336, 336), the input resolution of "
                                                 "ViT-L/14@336px"]),
])
def test_config_values_a_run_cannot_use_are_refused_before_anything(world, untouched, tmp_path, capsys, opts,
                                                                    fragments):
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *args_for(world, out), *opts)
    assert code == 2 and not out.exists()
    assert_one_line(err, "train.py: error:", *fragments)


def test_input_size_that_does_not_fit_a_weights_file_is_refused_once_it_is_read(world, untouched, tmp_path,
                                                                                 capsys):
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *args_for(world, out), "INPUT.SIZE", "(224, 224)")
    assert code == 2
    assert_one_line(err, "INPUT.SIZE is (224, 224)", f"(32, 32), the input resolution of {world[1]}", out=out)


def test_evaluation_accepts_max_epoch_0(world, finished, untouched, tmp_path, capsys):
    argv = args_for(world, tmp_path / "o", "MuPL", "--eval-only", "--model-dir", finished[0], "--load-epoch", 1)
    code, out, _ = run_main(capsys, *argv, "OPTIM.MAX_EPOCH", 0)
    assert code == 0 and "* accuracy:" in out


@pytest.mark.parametrize("trainer, opts, fragments", [
    ("MuPL", ["TRAINER.MUPL.PREC", "fp61"], ["TRAINER.MUPL.PREC is 'fp61'", "fp16, fp32, amp, bf16"]),
    ("MuPL", ["TRAINER.MUPL.FTP.MODE", "share"], ["TRAINER.MUPL.FTP.MODE is 'share'", "shared, independent"]),
    ("MuPL", ["TRAINER.MUPL.TVP.TEXT", "learnt"], ["TRAINER.MUPL.TVP.TEXT is 'learnt'", "learned, frozen"]),
    ("MuPL", ["TRAINER.MUPL.TVP.TOPK", "0"], ["TRAINER.MUPL.TVP.TOPK is 0", "1 or more"]),
    ("MuPL", ["TRAINER.MUPL.TVP.TEMP", "0.0"], ["TRAINER.MUPL.TVP.TEMP is 0.0", "positive"]),
    ("MuPL", ["TRAINER.MUPL.N_CTX", "0", "TRAINER.MUPL.CTX_INIT", ""], ["N_CTX is 0 and CTX_INIT is empty"]),
    ("CoCoOp", ["TRAINER.COCOOP.N_CTX", "0", "TRAINER.COCOOP.CTX_INIT", ""], ["TRAINER.COCOOP.N_CTX is 0"]),
    ("IVLP", ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", "0"], ["TRAINER.IVLP.PROMPT_DEPTH_TEXT is 0", "1 or more"]),
    ("PromptSRC", ["TRAINER.PROMPTSRC.GPA_STD", "0"], ["TRAINER.PROMPTSRC.GPA_STD is 0", "positive"]),
    ("PromptSRC", ["TRAINER.PROMPTSRC.GPA_MEAN", "1000"], ["TRAINER.PROMPTSRC.GPA_MEAN is 1000: with GPA_STD 1 it "
                                                           "puts no weight on epochs 1 .. 1 (OPTIM.MAX_EPOCH)"]),
    ("PromptSRC", ["TRAINER.PROMPTSRC.GPA_MEAN", str(10 ** 200)], ["TRAINER.PROMPTSRC.GPA_MEAN is 1000",
                                                                   "puts no weight on epochs 1 .. 1"]),
    ("PromptSRC", ["TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "-1"], ["TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT is -1", ">= 0"]),
    ("PromptSRC", ["TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT", "-10"], ["TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT is -10"]),
])
def test_trainer_config_values_are_refused_before_anything(world, untouched, tmp_path, capsys, trainer, opts,
                                                          fragments):
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *trainer_args(world, out, trainer), *opts)
    assert code == 2 and not out.exists()
    assert_one_line(err, "train.py: error:", *fragments)


def trainer_args(world, out, trainer):
    """``args_for`` with the trainer's own default recipe."""
    argv = args_for(world, out, trainer)
    cfg = (REPO / "configs/trainers" / trainer / "default_cfg.txt").read_text().strip()
    argv[argv.index("--config-file") + 1] = REPO / "configs/trainers" / trainer / f"{cfg}.yaml"
    return argv


@pytest.mark.parametrize("trainer, weights, opts, fragments", [
    ("MaPLe", "rn", [], ["MaPLe prompts CLIP's image transformer and needs a ViT backbone", "ResNet"]),
    ("MuPL", "rn", [], ["TRAINER.MUPL.TVP prompts CLIP's image transformer", "TVP.ENABLED False"]),
    ("IVLP", "vit", ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2"],
     ["TRAINER.IVLP.PROMPT_DEPTH_VISION is 12, but this backbone's tower has 3 layers; use at most 3"]),
    ("MuPL", "vit", ["TRAINER.MUPL.CTX_INIT", "", "TRAINER.MUPL.N_CTX", "72"],
     ['The prompt of class "abyssinian" is 78 tokens', "CLIP reads at most 77: shorten the class name, or N_CTX"]),
])
def test_config_values_the_backbone_cannot_take_are_one_line_once_it_is_loaded(world, untouched, tmp_path, capsys,
                                                                              trainer, weights, opts, fragments):
    """Prompt depths, ViT-only methods and prompt lengths are known once the backbone is read and the
    class names are known: one line, exit 2, at the end of the log too."""
    out = tmp_path / "o"
    tiny = save_tiny_clip(tmp_path / f"{weights}.pt", arch=weights)
    code, _, err = run_main(capsys, *trainer_args(world, out, trainer), "MODEL.BACKBONE.NAME", tiny, *opts)
    assert code == 2
    assert_one_line(err, "train.py: error:", *fragments, out=out)


# Errors while running: the one place in train.py that turns them into their line.

def end_loader_workers():
    """An in-process run that fails inside a DataLoader leaves its workers to the garbage collector, which
    waits 5 s for each to quit; a train.py process ends them when it exits."""
    for worker in multiprocessing.active_children():
        worker.kill()
        worker.join()


def test_unreadable_image_inside_a_dataloader_worker_is_one_line(world, untouched, tmp_path, capsys):
    folder = make_fake_oxford_pets(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    victim = sorted((folder / "images").iterdir())[0]
    victim.write_bytes(b"not an image")
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *args_for(world, out, data=tmp_path / "data"), "DATALOADER.NUM_WORKERS", 2)
    end_loader_workers()
    assert code == 1
    line = assert_one_line(err, f'train.py: error: Cannot read image "{victim}": cannot identify image file',
                           out=out)
    assert "DataLoader worker" not in line and "Traceback" not in line


def test_decompression_bomb_image_is_one_line(world, untouched, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # the 32x32 images are bombs now (> 2 x limit)
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *args_for(world, out), "DATALOADER.NUM_WORKERS", 2)
    end_loader_workers()
    assert code == 1
    assert_one_line(err, 'train.py: error: Cannot read image "', "could be decompression bomb",
                    "Shrink the image, or remove it from the dataset", out=out)


def test_large_images_below_the_bomb_limit_are_read_without_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 600)  # 32x32 = 1024: PIL would warn for each image
    path = write_image(tmp_path / "large.png", size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image(str(path)).size == (32, 32)
    assert not caught


def test_output_path_that_is_a_file(world, untouched, tmp_path, capsys, monkeypatch):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    code, _, err = run_main(capsys, *args_for(world, out))
    assert code == 1 and out.read_text() == "keep me"
    assert_one_line(err, f"The output path {out} is a file, not a folder: choose another --output-dir")
    monkeypatch.setenv("MUPL_TRACEBACK", "1")
    with pytest.raises(OSError, match="is a file, not a folder"):
        run_main(capsys, *args_for(world, out))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; see test_bad_inputs_runs.py")
def test_read_only_output_folder(world, untouched, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir(mode=0o555)
    code, _, err = run_main(capsys, *args_for(world, out))
    assert code == 1 and list(out.iterdir()) == []
    assert_one_line(err, f"Cannot write into the output folder {out} (Permission denied)", "make it writable")


class FillsUp:
    """A log file on a disk that fills up after ``room`` characters (an in-process fault injection)."""

    def __init__(self, path, mode, room=3000):
        self.file = open(path, mode)
        self.room = room

    def write(self, text):
        if self.file.tell() + len(text) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_log_and_scalars_that_cannot_be_written_are_said_once_and_the_run_goes_on(world, untouched, tmp_path,
                                                                                  capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logger_module, "open", FillsUp, raising=False)
    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    out = tmp_path / "o"
    code, printed, err = run_main(capsys, *args_for(world, out))
    assert code == 0 and "* accuracy:" in printed  # the console keeps everything
    assert err.count("Warning: cannot write the log") == 1 and "No space left on device" in err
    assert printed.count("Warning: cannot write tensorboard scalars") == 1
    assert "Traceback" not in err
    assert (out / "prompt_learner" / "model.pth.tar-1").is_file()
    log = (out / "log.txt").read_text()
    assert log and log in printed and "* accuracy:" not in log  # the log holds what fitted


def test_ctrl_c_before_training_starts_is_one_line(world, untouched, tmp_path, capsys, monkeypatch):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "build_trainer", interrupted)
    out = tmp_path / "o"
    code, printed, err = run_main(capsys, *args_for(world, out))
    assert code == 130 and "Traceback" not in err
    assert printed.splitlines()[-1] == "Interrupted (Ctrl-C); rerun the same command to continue"
    assert (out / "log.txt").read_text().splitlines()[-1] == printed.splitlines()[-1]


# --- third round: the legacy-checkpoint reader and twenty more one-line refusals ---

def outside(tmp_path, run):
    """Every file under tmp_path but the run folder's, hashed: what a run may not write."""
    return {name: digest for name, digest in snapshot(tmp_path).items() if not name.startswith(f"{run.name}/")}


def resumable_copy(finished, run):
    """The finished one-epoch MuPL run copied to ``run``, to be resumed for a second epoch."""
    shutil.copytree(finished[0], run)
    (run / ".run.lock").unlink(missing_ok=True)
    return run / "prompt_learner"


def test_a_text_file_as_the_newest_checkpoint_falls_back_to_the_previous_one(world, finished, untouched,
                                                                            tmp_path, capsys):
    folder = resumable_copy(finished, tmp_path / "run")
    (folder / "model.pth.tar-2").write_text("epoch: 2\nnotes: see model.pth.tar-1\n")
    (folder / "checkpoint").write_text("model.pth.tar-2\n")
    before = outside(tmp_path, tmp_path / "run")
    code, out, err = run_main(capsys, *args_for(world, tmp_path / "run"), "OPTIM.MAX_EPOCH", 2)
    assert code == 0, err
    assert f'Warning: Refusing to load "{folder / "model.pth.tar-2"}": it is not a checkpoint' in out
    assert "trying the previous checkpoint" in out and "Resumed from epoch 1" in out and "epoch [2/2]" in out
    assert outside(tmp_path, tmp_path / "run") == before


def test_a_dict_under_the_dassl_successors_step_leaves_the_schedule_running(world, finished, untouched, tmp_path,
                                                                          capsys):
    """A Dassl.pytorch checkpoint whose pickled successor scheduler holds ``step`` = defaultdict: the resumed
    run's schedule advances and the checkpoint it writes loads again."""
    folder = tmp_path / "run" / "prompt_learner"
    ours = load_checkpoint(str(finished[0] / "prompt_learner" / "model.pth.tar-1"))
    path = write_dassl_pytorch_checkpoint(folder / "model.pth.tar-1", ours["state_dict"], epoch=1)
    raw = torch.load(path, weights_only=False)  # the test's own file
    raw["scheduler"]["successor"].step = defaultdict(dict)
    torch.save(raw, path)
    before = outside(tmp_path, tmp_path / "run")
    code, out, err = run_main(capsys, *args_for(world, tmp_path / "run"), "OPTIM.MAX_EPOCH", 2)
    assert code == 0, err
    assert "Resumed from epoch 1" in out
    written = check_checkpoint(load_checkpoint(str(folder / "model.pth.tar-2")), "written")
    assert written["scheduler"]["successor"]["last_epoch"] == 1 and "step" not in written["scheduler"]["successor"]
    assert outside(tmp_path, tmp_path / "run") == before


def test_a_dassl_run_without_warmup_resumed_by_a_recipe_with_one_is_one_line(world, finished, untouched, tmp_path,
                                                                             capsys):
    """Dassl.pytorch's plain cosine scheduler state (no successor) under MuPL's warm-up recipe: exit 1, the
    line naming the file and the fix, the checkpoint as it was."""
    folder = tmp_path / "run" / "prompt_learner"
    ours = load_checkpoint(str(finished[0] / "prompt_learner" / "model.pth.tar-1"))
    path = write_dassl_pytorch_checkpoint(folder / "model.pth.tar-1", ours["state_dict"], epoch=1)
    raw = torch.load(path, weights_only=False)  # the test's own file
    raw["scheduler"] = LRScheduler.state_dict(raw["scheduler"]["successor"])
    torch.save(raw, path)
    before = snapshot(folder)
    code, _, err = run_main(capsys, *args_for(world, tmp_path / "run"), "OPTIM.MAX_EPOCH", 2)
    assert code == 1
    assert_one_line(err, f'"{path}": its LR schedule lacks a warm-up and this run\'s has one',
                    "OPTIM.WARMUP_EPOCH", out=tmp_path / "run")
    assert snapshot(folder) == before


@pytest.mark.parametrize("weights, fragments", [
    ("missing-key", ["is not a complete CLIP state dict: it lacks 1 of CLIP's keys (visual.layer1.0.conv1.weight)"]),
    ("projection-only", ["it lacks 5 of CLIP's keys (ln_final.weight, positional_embedding", "download the weights"]),
])
def test_clip_weights_without_some_keys_name_the_file_and_the_keys(world, untouched, tmp_path, capsys, weights,
                                                                   fragments):
    state = tiny_state_dict("rn")
    if weights == "missing-key":
        del state["visual.layer1.0.conv1.weight"]
    else:
        state = {"text_projection": state["text_projection"]}
    path = tmp_path / f"{weights}.pt"
    torch.save(state, path)
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *args_for(world, out), "MODEL.BACKBONE.NAME", path)
    assert code == 1
    assert_one_line(err, str(path), *fragments, out=out)


def test_a_dataset_entry_that_is_a_folder_is_one_line(world, untouched, tmp_path, capsys):
    folder = make_fake_oxford_pets(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    victim = sorted((folder / "images").iterdir())[0]
    victim.unlink()
    victim.mkdir()
    out = tmp_path / "o"
    code, _, err = run_main(capsys, *args_for(world, out, data=tmp_path / "data"))
    assert code == 1
    assert_one_line(err, "1 of 12 images listed in", f"(the first, {victim}, is a folder, not an image)", out=out)
