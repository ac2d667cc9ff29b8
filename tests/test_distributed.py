"""torchrun on the CPU (gloo): DDP takes one process's step, and a sharded evaluation counts every image once.

The tree has exactly 2 training images and no random augmentation, so one step of a single process with
batch 2 and one step of 2 processes with batch 1 each see the same two images, whatever the shuffle:
their updates must agree (DDP averages the two per-image gradients, the single process takes the mean
loss). The test set has 7 images, so 2 processes evaluate shards of 4 and 3.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip.tiny import save_tiny_clip
from dassl.data.samplers import ShardSampler
from dassl.engine import distributed
from tests.helpers import make_tiny_folders
from tools import provenance

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TRAIN_COUNTS, TEST_COUNTS = (1, 1), (4, 3)
TRAINERS = ("LinearProbe", "CoOp")
CHECKPOINT_DIRS = {"LinearProbe": "linear", "CoOp": "prompt_learner"}
DDP_BATCH = ("DATALOADER.TRAIN_X.BATCH_SIZE", "1")

CONFIG = """
INPUT:
  TRANSFORMS: ["normalize"]
DATALOADER:
  NUM_WORKERS: 0
  TRAIN_X:
    BATCH_SIZE: 2
  TEST:
    BATCH_SIZE: 2
OPTIM:
  NAME: "sgd"
  LR: 0.5
  MAX_EPOCH: 1
TRAIN:
  PRINT_FREQ: 1
TEST:
  PER_CLASS_RESULT: True
DATASET:
  NAME: "TinyFolders"
"""
# USE_CUDA False: gloo on the CPU even where a GPU is present (2 processes cannot share one GPU under nccl).
EXTRA_OPTS = {
    "LinearProbe": ["USE_CUDA", "False", "INPUT.SIZE", "(8, 8)"],
    "CoOp": ["USE_CUDA", "False", "INPUT.SIZE", "(32, 32)", "TRAINER.COOP.PREC", "fp32",
             "TRAINER.COOP.N_CTX", "4"],
}


class Run:
    """train.py started in the background, in one process or under torchrun with ``nproc`` processes."""

    def __init__(self, workspace, name, trainer, nproc, *opts, flags=()):
        out = workspace / name
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}", OMP_NUM_THREADS="1",
                   MUPL_EXTRA_PLUGINS="fixture_plugins.linear_probe")
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        launcher = [sys.executable]
        if nproc > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        self.cmd = [*launcher, str(REPO / "train.py"), "--root", str(workspace / "data"), "--seed", "1",
                    "--trainer", trainer, "--config-file", str(workspace / "cfg.yaml"), "--output-dir", str(out),
                    *flags, "MODEL.BACKBONE.NAME", str(workspace / "tiny_vit.pt"), *EXTRA_OPTS[trainer], *opts]
        self.out = out
        self.streams = workspace / f"{name}.stdout", workspace / f"{name}.stderr"
        with open(self.streams[0], "w") as stdout, open(self.streams[1], "w") as stderr:
            self.process = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=stdout, stderr=stderr)


def finish(*runs):
    """Wait for every run, then fail with the output of the first that failed."""
    for run in runs:
        run.returncode = run.process.wait(timeout=300)
        run.stdout, run.stderr = (path.read_text() for path in run.streams)
    for run in runs:
        assert run.returncode == 0, f"{run.cmd}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return runs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    make_tiny_folders(root / "data", TRAIN_COUNTS, TEST_COUNTS)
    (root / "cfg.yaml").write_text(CONFIG)
    save_tiny_clip(str(root / "tiny_vit.pt"), arch="vit", seed=0)
    return root


@pytest.fixture(scope="module")
def runs(workspace):
    """Every run the tests read, started side by side where they do not depend on each other.

    Per trainer, one process with batch 2 and torchrun with 2 processes of batch 1 each; then one process
    evaluates the torchrun LinearProbe model, and torchrun resumes a copy of that run for a second epoch.
    """
    done = {}
    for trainer, run in zip(TRAINERS, finish(*(Run(workspace, f"{t}-single", t, 1) for t in TRAINERS))):
        done[trainer, "single"] = run
    for trainer, run in zip(TRAINERS, finish(*(Run(workspace, f"{t}-ddp", t, 2, *DDP_BATCH) for t in TRAINERS))):
        done[trainer, "ddp"] = run
    ddp = done["LinearProbe", "ddp"].out
    shutil.copytree(ddp, workspace / "resumed")
    eval_flags = ("--eval-only", "--model-dir", str(ddp), "--load-epoch", "1")
    done["eval"], done["resumed"] = finish(
        Run(workspace, "eval", "LinearProbe", 1, flags=eval_flags),
        Run(workspace, "resumed", "LinearProbe", 2, *DDP_BATCH, "OPTIM.MAX_EPOCH", "2"),
    )
    return done


def checkpoint(out, trainer, epoch=1):
    return torch.load(out / CHECKPOINT_DIRS[trainer] / f"model.pth.tar-{epoch}", weights_only=True)


def result_block(text):
    """The last ``=> result`` block with its per-class lines."""
    return re.findall(r"=> result\n(?:\*.*\n)+=> per-class result\n(?:\*.*\n)+", text)[-1]


# LinearProbe: one matrix product, float32 agrees to rounding. CoOp back-propagates through CLIP's text
# transformer, where a batch of 2 and the mean of two batches of 1 already differ by ~5e-6 of the gradient's
# size in float32 in a single process (the order of the sums changes), so it is compared relative to that.
@pytest.mark.parametrize("trainer, atol, rtol", [("LinearProbe", 1e-6, 0.0), ("CoOp", 0.0, 2e-5)])
def test_two_processes_of_batch_1_take_the_step_of_one_process_of_batch_2(runs, trainer, atol, rtol):
    ref, got = checkpoint(runs[trainer, "single"].out, trainer), checkpoint(runs[trainer, "ddp"].out, trainer)
    for key, value in ref["state_dict"].items():
        scale = value.abs().max().item()
        assert (value - got["state_dict"][key]).abs().max().item() <= atol + rtol * scale, key
    # SGD's first momentum buffer is the gradient (plus weight decay): the averaged gradients themselves.
    for index, state in ref["optimizer"]["state"].items():
        grad_ref, grad_got = state["momentum_buffer"], got["optimizer"]["state"][index]["momentum_buffer"]
        scale = grad_ref.abs().max().item()
        assert scale > 1e-2  # a real gradient, not a vanishing one
        assert (grad_ref - grad_got).abs().max().item() <= atol + rtol * scale


@pytest.mark.parametrize("trainer", TRAINERS)
def test_only_rank_0_prints_and_writes(runs, trainer):
    run = runs[trainer, "ddp"]
    for line in ("Finish training", "=> result", "Checkpoint saved to", "epoch [1/1] batch [1/1]"):
        assert run.stdout.count(line) == 1, line
    assert "warning" not in run.stderr.lower() and "[rank" not in run.stderr
    expected = [".run.lock", "log.txt", "run.json", CHECKPOINT_DIRS[trainer], "tensorboard"]  # rank 0's lock, record
    assert sorted(p.name for p in run.out.iterdir()) == sorted(expected)
    assert provenance.read_record(run.out)["status"] == "finished"
    assert result_block(run.stdout) == result_block((run.out / "log.txt").read_text())


def test_sharded_evaluation_counts_every_image_once(runs):
    """The same weights evaluated at the end of training by 2 processes (shards of 4 and 3) and by one."""
    block = result_block(runs["LinearProbe", "ddp"].stdout)
    assert f"* total: {sum(TEST_COUNTS)}\n" in block
    assert block == result_block(runs["eval"].stdout)
    assert "* class: 1 (class_1)\ttotal: 3\t" in block


def test_torchrun_resumes_from_rank_0s_checkpoint(runs):
    resumed = runs["resumed"]
    assert resumed.stdout.count("Resumed from epoch 1") == 1
    assert "epoch [2/2] batch [1/1]" in resumed.stdout and "epoch [1/2]" not in resumed.stdout
    assert checkpoint(resumed.out, "LinearProbe", epoch=2)["epoch"] == 2
    assert f"* total: {sum(TEST_COUNTS)}\n" in result_block(resumed.stdout)
    assert len(list(resumed.out.glob("log.txt*"))) == 2


def test_scripts_launch_torchrun_when_ngpu_is_above_1(tmp_path):
    def run_train_py(ngpu):
        env = dict(os.environ, PYTHON="echo", **({"NGPU": ngpu} if ngpu else {}))
        return subprocess.run(["bash", "-c", "source scripts/lib.sh && run_train_py --seed 1"], cwd=REPO,
                              env=env, capture_output=True, text=True)

    assert run_train_py(None).stdout.splitlines()[-1] == f"{REPO}/train.py --seed 1"
    launched = run_train_py("4").stdout.splitlines()[-1]
    assert launched == f"-m torch.distributed.run --standalone --nproc_per_node=4 {REPO}/train.py --seed 1"
    refused = run_train_py("two")
    assert refused.returncode != 0 and "NGPU must be a positive number" in refused.stderr


@pytest.mark.parametrize("size, world_size", [(7, 2), (7, 3), (2, 3)])  # uneven shards; an empty one
def test_shards_cover_the_set_once_and_gather_back_in_order(monkeypatch, size, world_size):
    batch_size = 2
    shards = []
    for rank in range(world_size):
        indices = list(ShardSampler(size, rank, world_size))
        batches = [torch.tensor(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
        shards.append([(index[:, None].float(), index) for index in batches])  # output, label = the index
    assert sorted(int(i) for shard in shards for _, label in shard for i in label) == list(range(size))
    monkeypatch.setattr(distributed, "gather_to_main", lambda shard: shards)
    outputs, labels = distributed.gather_in_dataset_order(shards[0], world_size)
    assert labels.tolist() == list(range(size)) and outputs[:, 0].tolist() == list(range(size))
