"""Drop-in both ways with the CoOp family: code written for OpenAI's clip and Dassl.pytorch runs here and
gets the same numbers; checkpoints written by Dassl.pytorch (pickled schedulers, CoOp's class-set buffers)
load for evaluation, resume and INIT_WEIGHTS; our trainers load without this engine's loader."""
import os
import re
from pathlib import Path

import pytest
import torch

from clip.tiny import build_tiny_clip
from dassl.utils import CheckpointError, load_checkpoint
from tests.helpers import make_pets_world, run_main, write_dassl_pytorch_checkpoint
from trainers import cocoop, coop
from trainers.common import default_trainer_node, freeze_all_but_prompt_learner, load_like_coop

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
COCOOP_CFG = REPO / "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_pets_world(tmp_path_factory.mktemp("compat"))


def argv(world, out, trainer, *extra, epochs=1):
    root, tiny = world
    return ["--root", root / "data", "--seed", 1, "--trainer", trainer,
            "--dataset-config-file", REPO / "configs/datasets/oxford_pets.yaml", "--config-file", COCOOP_CFG,
            "--output-dir", out, *extra, "MODEL.BACKBONE.NAME", tiny, "INPUT.SIZE", "(32, 32)",
            "OPTIM.MAX_EPOCH", epochs, "DATALOADER.NUM_WORKERS", 0, "DATASET.NUM_SHOTS", 2,
            "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.COCOOP.PREC", "fp32"]


def accuracy(text):
    return float(re.findall(r"\* accuracy: ([\d.]+)%", text)[-1])


@pytest.fixture(scope="module")
def coop_run(world, tmp_path_factory):
    """ExternalCoCoOp (CoOp-repository-style code) trained for one epoch, and its checkpoint rewritten as
    Dassl.pytorch writes it: fp16 tensors (CoOp's default precision), token_prefix/suffix included, the
    warm-up scheduler pickled with its successor and optimizer objects, val_result None."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("MUPL_EXTRA_PLUGINS", "fixture_plugins.coop_style")
    capsys_stub = tmp_path_factory.mktemp("coop")
    out = capsys_stub / "trained"
    code, stdout = _run(*argv(world, out, "ExternalCoCoOp"))
    assert code == 0, stdout
    ours = load_checkpoint(str(out / "prompt_learner" / "model.pth.tar-1"))
    dassl_dir = capsys_stub / "dassl_format"
    state = {name: tensor.half() for name, tensor in ours["state_dict"].items()}
    write_dassl_pytorch_checkpoint(dassl_dir / "prompt_learner" / "model.pth.tar-1", state, epoch=1)
    yield out, dassl_dir, stdout
    monkeypatch.undo()


def _run(*args):
    """train.main in-process without pytest's capsys (module fixtures cannot take it)."""
    import io
    import sys

    import train
    from dassl.utils.logger import Logger

    captured, previous = io.StringIO(), sys.stdout
    sys.stdout = captured
    try:
        code = train.main(train.build_parser().parse_args([str(a) for a in args]))
    finally:
        if isinstance(sys.stdout, Logger):
            sys.stdout.close()
        sys.stdout = previous
    return code, captured.getvalue()


def test_coop_style_trainer_from_outside_the_repository_trains(coop_run):
    _, _, stdout = coop_run
    assert "Finish training" in stdout and "* accuracy:" in stdout.split("Finish training")[1]


def test_dassl_pytorch_checkpoint_evaluates_as_coops_own_loader_does(world, coop_run, tmp_path, capsys,
                                                                    monkeypatch):
    _, dassl_dir, _ = coop_run
    raw = torch.load(dassl_dir / "prompt_learner" / "model.pth.tar-1", weights_only=False)
    assert type(raw["scheduler"]["successor"]).__name__ == "CosineAnnealingLR"  # really pickled objects
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(dassl_dir / "prompt_learner" / "model.pth.tar-1", weights_only=True)

    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("MUPL_EXTRA_PLUGINS", "fixture_plugins.coop_style")
    code, theirs, err = run_main(capsys, *argv(world, tmp_path / "theirs", "ExternalCoCoOp", "--eval-only",
                                               "--model-dir", dassl_dir, "--load-epoch", 1))
    assert code == 0, err
    code, ours, err = run_main(capsys, *argv(world, tmp_path / "ours", "CoCoOp", "--eval-only",
                                             "--model-dir", dassl_dir, "--load-epoch", 1))
    assert code == 0, err
    assert accuracy(ours) == accuracy(theirs)
    assert "token_prefix, token_suffix from the checkpoint are not loaded" in ours


def test_openai_style_cocoop_and_ours_give_the_same_logits_from_one_checkpoint(coop_run, world):
    """The numbers, not only the accuracy: CoOp-repository code on this clip/ and this project's CoCoOp."""
    import fixture_plugins.coop_style as external  # noqa: E402  (tests/ is on sys.path via coop_run)

    _, dassl_dir, _ = coop_run
    state_dict = load_checkpoint(str(dassl_dir / "prompt_learner" / "model.pth.tar-1"))["state_dict"]
    names = ["abyssinian", "american bulldog"]
    clip_model = build_tiny_clip().float()
    theirs = external.CustomCLIP("a photo of a", names, clip_model).eval()
    theirs.prompt_learner.load_state_dict({k: v.float() for k, v in state_dict.items()})
    ours = cocoop.CoCoOpCLIP(default_trainer_node(cocoop, "COCOOP", N_CTX=4, CTX_INIT="a photo of a"),
                             names, clip_model)
    freeze_all_but_prompt_learner(ours)
    ours.prompt_learner.load_state_dict(state_dict)
    image = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(image), theirs(image), atol=1e-3)  # logits = 14.3 x cos: 7e-5 in cos


def test_dassl_pytorch_checkpoint_resumes_and_initialises(world, coop_run, tmp_path, capsys):
    _, dassl_dir, _ = coop_run
    code, out, err = run_main(capsys, *argv(world, tmp_path / "resumed", "CoCoOp", "--resume", dassl_dir,
                                            epochs=2))
    assert code == 0, err
    assert "Resumed from epoch 1" in out and "epoch [2/2]" in out and "epoch [1/2]" not in out
    weights = dassl_dir / "prompt_learner" / "model.pth.tar-1"
    code, out, err = run_main(capsys, *argv(world, tmp_path / "init", "CoCoOp"), "MODEL.INIT_WEIGHTS", weights)
    assert code == 0, err
    assert f'Successfully loaded pretrained weights from "{weights}"' in out


def test_a_dassl_checkpoint_hiding_another_object_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model.pth.tar-1"
    write_dassl_pytorch_checkpoint(path, {"ctx": torch.zeros(4, 64)}, epoch=1, extra={"hook": Payload()})
    with pytest.raises(CheckpointError, match=r"holds a pickled \S*system, .* nothing in it was run") as refused:
        load_checkpoint(str(path))
    assert not marker.exists()
    assert "weights_only" not in str(refused.value)


def test_a_mismatched_checkpoint_names_every_missing_and_unexpected_key(world, coop_run, tmp_path, capsys):
    """A CoCoOp checkpoint evaluated by CoOp: all keys are listed, the message is one line."""
    _, dassl_dir, _ = coop_run
    args = argv(world, tmp_path / "o", "CoOp", "--eval-only", "--model-dir", dassl_dir, "--load-epoch", 1)
    args[args.index("--config-file") + 1] = REPO / "configs/trainers/CoOp/vit_b16_ctxv1.yaml"
    code, _, err = run_main(capsys, *args)
    assert code == 1
    line = err.strip().splitlines()[-1]
    for key in ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
                "meta_net.linear2.bias"):
        assert key in line
    assert "unexpected keys" in line


def test_coop_with_csc_and_ctx_init_shares_one_context_as_coop_does():
    clip_model = build_tiny_clip().float()
    names = ["cat", "dog", "pug"]
    shared = coop.CoOpCLIP(default_trainer_node(coop, "COOP", CSC=True, CTX_INIT="a photo of a"), names, clip_model)
    assert shared.prompt_learner.ctx.shape == (4, 64)
    per_class = coop.CoOpCLIP(default_trainer_node(coop, "COOP", CSC=True, N_CTX=4), names, clip_model)
    assert per_class.prompt_learner.ctx.shape == (3, 4, 64)
    coop_checkpoint = {"ctx": torch.randn(4, 64).half(), "token_prefix": torch.zeros(3, 1, 64),
                       "token_suffix": torch.zeros(3, 72, 64)}
    shared.prompt_learner.load_state_dict(coop_checkpoint)
    assert torch.equal(shared.prompt_learner.ctx, coop_checkpoint["ctx"].float())


def test_prompt_trainers_load_without_this_engines_loader(world, coop_run, tmp_path, capsys):
    """The loader our trainers use on Dassl.pytorch (whose load_model cannot print a None val_result)."""
    _, dassl_dir, _ = coop_run
    import train
    from dassl.engine import build_trainer

    args = train.build_parser().parse_args([str(a) for a in argv(world, tmp_path / "o", "CoCoOp")])
    cfg = train.setup_cfg(args, __import__("plugins").import_plugins())
    trainer = build_trainer(cfg)
    before = trainer.model.prompt_learner.ctx.detach().clone()
    load_like_coop(trainer, str(dassl_dir), epoch=1)
    expected = load_checkpoint(str(dassl_dir / "prompt_learner" / "model.pth.tar-1"))["state_dict"]["ctx"]
    assert not torch.equal(before, trainer.model.prompt_learner.ctx)
    assert torch.equal(trainer.model.prompt_learner.ctx, expected.float())
    with pytest.raises(FileNotFoundError, match="model.pth.tar-9"):
        load_like_coop(trainer, str(dassl_dir), epoch=9)
