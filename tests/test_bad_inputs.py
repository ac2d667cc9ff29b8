"""The catalogue of bad inputs: one clear message, a non-zero exit, and earlier results untouched."""
import hashlib
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

import train
from clip import clip as clip_module
from clip.tiny import save_tiny_clip
from dassl.utils import CheckpointError, load_checkpoint, save_checkpoint
from tests.fake_trees import make_fake_oxford_pets
from tests.helpers import run_main

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    make_fake_oxford_pets(root / "data", n_train=2, n_val=1, n_test=2)
    tiny = save_tiny_clip(root / "tiny.pt")
    return root, tiny


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
