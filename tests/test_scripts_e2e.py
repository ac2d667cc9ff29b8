"""The real run scripts end to end on the CPU: a tiny random CLIP and a fake Oxford Pets tree."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip.tiny import save_tiny_clip
from dassl.utils.runlock import folder_in_use
from tests.fake_trees import make_fake_imagenet_folders, make_fake_oxford_pets, write_classnames

REPO = Path(__file__).resolve().parents[1]
SHOTS = 2
LOG_END = {"train": "Finish training", "test": "=> result"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    make_fake_oxford_pets(root / "data")
    tiny = root / "tiny_vit.pt"
    save_tiny_clip(str(tiny), arch="vit", seed=0)
    env = dict(os.environ, DATA=str(root / "data"), OUTPUT=str(root / "output"),
               SHOTS=str(SHOTS), PYTHON=sys.executable, FORCE="0")
    opts = ["MODEL.BACKBONE.NAME", str(tiny), "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "2",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "32",
            "TRAIN.CHECKPOINT_FREQ", "1"]
    return root, env, opts


def script(workspace, name, *args, check=True):
    root, env, opts = workspace
    result = subprocess.run(["bash", f"scripts/{name}", *args, *opts], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_dir(workspace, split, trainer, seed=1):
    root = workspace[0]
    folder = "train_base" if split == "train" else "test_new"
    return (root / "output" / "base2new" / folder / "oxford_pets" / f"shots_{SHOTS}" / trainer
            / "vit_b16_c4_ep10_batch1_ctxv1" / f"seed{seed}")


def assert_finished(directory, kind):
    logs = sorted(directory.glob("log.txt*"))
    assert logs, f"no log in {directory}"
    text = "".join(log.read_text() for log in logs)
    assert LOG_END[kind] in text
    assert "* accuracy:" in text.split(LOG_END[kind])[-1]


@pytest.mark.parametrize("trainer", ["MuPL", "CoCoOp"])
def test_base2new_train_then_test(workspace, trainer):
    train = run_dir(workspace, "train", trainer)
    script(workspace, "base2new_train.sh", "oxford_pets", "1", trainer)
    assert_finished(train, "train")
    checkpoint = torch.load(train / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    names = set(checkpoint["state_dict"])
    expected_prefixes = ("ctx", "meta_tokens.", "visual_prompt.") if trainer == "MuPL" else ("ctx", "meta_net.")
    assert names and all(name.startswith(expected_prefixes) for name in names), names

    rerun = script(workspace, "base2new_train.sh", "oxford_pets", "1", trainer)
    assert "so skip this job" in rerun.stdout

    test = run_dir(workspace, "test", trainer)
    script(workspace, "base2new_test.sh", "oxford_pets", "1", trainer)
    assert_finished(test, "test")
    assert "Loading weights to prompt_learner" in (test / "log.txt").read_text()
    assert not (test / "prompt_learner").exists()


def test_base2new_test_without_a_training_run_names_the_command(workspace):
    result = script(workspace, "base2new_test.sh", "oxford_pets", "3", "CoCoOp", check=False)
    assert result.returncode != 0
    assert str(run_dir(workspace, "train", "CoCoOp", seed=3)) in result.stderr
    assert "bash scripts/base2new_train.sh oxford_pets 3 CoCoOp" in result.stderr


def test_killed_training_resumes_from_its_last_checkpoint(workspace):
    root, env, opts = workspace
    train = run_dir(workspace, "train", "MuPL", seed=2)
    opts = [*opts, "OPTIM.MAX_EPOCH", "30", "TRAIN.KEEP_LAST", "2"]
    epoch_checkpoints = train / "prompt_learner"
    process = subprocess.Popen(["bash", "scripts/base2new_train.sh", "oxford_pets", "2", *opts],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while (not list(epoch_checkpoints.glob("model.pth.tar-*")) and process.poll() is None
           and time.time() < deadline):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 30  # the killed train.py holds the run folder until it is gone (not only bash)
    while folder_in_use(train) and time.time() < deadline:
        time.sleep(0.02)
    assert list(epoch_checkpoints.glob("model.pth.tar-*")), "no epoch checkpoint before the kill"
    assert not (epoch_checkpoints / "model.pth.tar-30").exists(), "finished before the kill"

    result = subprocess.run(["bash", "scripts/base2new_train.sh", "oxford_pets", "2", *opts],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Resuming the unfinished run" in result.stdout
    assert_finished(train, "train")
    resumed_log = sorted(train.glob("log.txt*"), key=lambda p: p.stat().st_mtime)[-1]
    assert "epoch [1/30]" not in resumed_log.read_text()
    assert "epoch [30/30]" in resumed_log.read_text()


def test_force_moves_the_finished_run_aside(workspace):
    root, env, opts = workspace
    test = run_dir(workspace, "test", "MuPL")
    if not test.exists():
        script(workspace, "base2new_train.sh", "oxford_pets", "1", "MuPL")
        script(workspace, "base2new_test.sh", "oxford_pets", "1", "MuPL")
    script(workspace, "base2new_test.sh", "--force", "oxford_pets", "1", "MuPL")
    assert_finished(test, "test")
    assert list(test.parent.glob("seed1.old-*"))


def test_cross_dataset_and_fewshot_scripts(workspace):
    """xd_train on ImageNet, then xd_test on another dataset; fewshot on all classes; CoOp's folders."""
    root = workspace[0]
    wnids = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    imagenet = root / "data" / "imagenet"
    write_classnames(imagenet, wnids)
    make_fake_imagenet_folders(imagenet, "images/train", list(wnids), 3, size=32)
    make_fake_imagenet_folders(imagenet, "images/val", list(wnids), 2, size=32)
    cfg = "vit_b16_c4_ep10_batch1_ctxv1"

    script(workspace, "xd_train.sh", "1", "CoCoOp")
    source = root / "output" / "imagenet" / "CoCoOp" / f"{cfg}_{SHOTS}shots" / "seed1"
    assert_finished(source, "train")
    script(workspace, "xd_test.sh", "oxford_pets", "1", "CoCoOp")
    target = root / "output" / "evaluation" / "CoCoOp" / f"{cfg}_{SHOTS}shots" / "oxford_pets" / "seed1"
    assert_finished(target, "test")
    assert "* total: 12" in (target / "log.txt").read_text()      # all 4 classes x 3 test images

    wrong = script(workspace, "dg_test.sh", "oxford_pets", "1", "CoCoOp", check=False)
    assert wrong.returncode != 0 and "ImageNet variant" in wrong.stderr

    script(workspace, "fewshot.sh", "oxford_pets", "1", "1", "CoOp", "vit_b16_ctxv1")
    fewshot = root / "output" / "fewshot" / "oxford_pets" / "shots_1" / "CoOp" / "vit_b16_ctxv1" / "seed1"
    assert_finished(fewshot, "train")
    assert "# train_x  4" in (fewshot / "log.txt").read_text()     # 1 shot x 4 classes
