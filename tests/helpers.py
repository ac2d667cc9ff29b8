"""Pieces several test files share: the linear-probe run's config, data and command, train.main
in-process, and checkpoints in Dassl.pytorch's format."""
import os
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.optim.lr_scheduler import LRScheduler

import train
from dassl.config import get_cfg_default
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils.logger import Logger
from clip.tiny import save_tiny_clip
from tests.fake_trees import make_fake_oxford_pets

LINEAR_PROBE_CONFIG = """
INPUT:
  SIZE: (8, 8)
  INTERPOLATION: "bicubic"
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]
DATALOADER:
  NUM_WORKERS: 0
  TRAIN_X:
    BATCH_SIZE: 4
  TEST:
    BATCH_SIZE: 8
OPTIM:
  NAME: "sgd"
  LR: 0.01
  MAX_EPOCH: 3
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 0.001
TRAIN:
  PRINT_FREQ: 2
DATASET:
  NAME: "TinyFolders"
"""


def make_pets_world(root, n_test=3):
    """A fake OxfordPets tree and a tiny CLIP file under root: all a base-to-new train.py run reads."""
    make_fake_oxford_pets(root / "data", n_train=2, n_val=1, n_test=n_test)
    return root, save_tiny_clip(root / "tiny.pt")


def make_tiny_folders(root, train_counts=(6, 6, 6), test_counts=(4, 4, 4)):
    """``tiny_folders/{train,test}/class_<k>/<i>.png`` (the LinearProbe fixture's dataset), with the
    given number of images per class; class k is a noisy grey at level 60 k, so it is learnable."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", train_counts), ("test", test_counts)):
        for label, count in enumerate(counts):
            folder = root / "tiny_folders" / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 60, (8, 8, 3)) + 60 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")


REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


def linear_probe_command(workspace, out, *extra, env_extra=None):
    """(argv, env) of `python train.py` for the LinearProbe fixture trainer on ``workspace`` (which holds
    ``data/`` from make_tiny_folders and ``cfg.yaml`` = LINEAR_PROBE_CONFIG), writing into ``out``."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}", MUPL_EXTRA_PLUGINS="fixture_plugins.linear_probe")
    env.update(env_extra or {})
    argv = [sys.executable, str(REPO / "train.py"), "--root", str(workspace / "data"), "--seed", "1",
            "--trainer", "LinearProbe", "--config-file", str(workspace / "cfg.yaml"), "--output-dir", str(out),
            *extra]
    return argv, env


def run_main(capsys, *argv):
    """train.main as `python train.py ARGV` would run it: (exit code, stdout, stderr); the log file closed."""
    try:
        code = train.main(train.build_parser().parse_args([str(a) for a in argv]))
    finally:
        if isinstance(sys.stdout, Logger):
            sys.stdout.close()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_same_loss_gradients(logits, expected, labels, params, atol=1e-5):
    """A fast path must give the reference's cross-entropy gradients, all non-zero, not only its logits."""
    grads = torch.autograd.grad(F.cross_entropy(logits, labels), params)
    expected_grads = torch.autograd.grad(F.cross_entropy(expected, labels), params)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.abs().max() > 0
        assert torch.allclose(grad, expected_grad, atol=atol)


def assert_same_values_and_gradients(fast, reference, inputs, atol=1e-5):
    """A fast path must give the reference's values, and the same non-zero gradients reaching ``inputs``
    (a tensor or several) for a random linear read-out of them."""
    inputs = (inputs,) if torch.is_tensor(inputs) else tuple(inputs)
    assert fast.shape == reference.shape
    assert torch.allclose(fast, reference, atol=atol)
    weights = torch.randn(fast.shape, generator=torch.Generator().manual_seed(0))
    grads_fast = torch.autograd.grad((fast * weights).sum(), inputs, retain_graph=True)
    grads_reference = torch.autograd.grad((reference * weights).sum(), inputs, retain_graph=True)
    for grad_fast, grad_reference in zip(grads_fast, grads_reference):
        assert grad_reference.abs().max() > 0
        assert torch.allclose(grad_fast, grad_reference, atol=atol)


def write_dassl_pytorch_checkpoint(path, state_dict, epoch, extra=None):
    """A checkpoint as Dassl.pytorch's ``save_model`` writes one after ``epoch`` epochs of SGD with a cosine
    schedule and a constant warm-up: its five keys, the optimizer's state (momentum buffers, so a non-empty
    defaultdict), and the scheduler's ``state_dict()`` as Dassl's warm-up wrapper returns it, through the
    ``LRScheduler`` method it inherits: every attribute but the optimizer, so the successor scheduler
    object (holding the optimizer object) is pickled into the file."""
    optim_cfg = get_cfg_default().OPTIM
    optim_cfg.merge_from_list(["NAME", "sgd", "LR_SCHEDULER", "cosine", "MAX_EPOCH", 2, "WARMUP_EPOCH", 1,
                               "WARMUP_TYPE", "constant"])
    params = [torch.nn.Parameter(tensor.clone()) for name, tensor in state_dict.items()
              if not name.endswith(("token_prefix", "token_suffix"))]  # CoOp's buffers are no parameters
    optimizer = build_optimizer(params, optim_cfg)
    scheduler = build_lr_scheduler(optimizer, optim_cfg)
    for _ in range(epoch):
        for param in params:
            param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
    checkpoint = {"state_dict": OrderedDict(state_dict), "epoch": epoch, "optimizer": optimizer.state_dict(),
                  "scheduler": LRScheduler.state_dict(scheduler), "val_result": None, **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
