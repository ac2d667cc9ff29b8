"""tools/bench.py: each trainer's reference design is the trainer itself (logits, loss terms, gradients) run
the official way (77-token class prompts, deep prompts included), a wrong reference is refused before
anything is timed, and the CLI checks, times and counts every method.

CoCoOp's fast path against the per-image 77-token loop, logits and gradients, is
tests/test_trainers_baselines.py::test_cocoop_batched_truncated_text_matches_the_per_image_loop.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools import bench

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 7


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "clip.pt"
    torch.save(bench.random_clip("tiny").state_dict(), path)
    return str(path)


def tiny_trainer(weights, name):
    return bench.build_trainer(bench.recipe_cfg(name, weights, 32, cpu=True), bench.class_names(N_CLASSES))


def loss_and_gradients(trainer, image, label, reference):
    params = [param for param in trainer.model.parameters() if param.requires_grad]
    with bench.design(trainer.model, reference):
        terms, logits = trainer.model.training_loss(image, label)
        loss = sum(terms.values()) if isinstance(terms, dict) else terms
        return logits, loss, torch.autograd.grad(loss, params)


def text_tower_inputs(model):
    """Shapes of what reaches the text tower's first block through OpenAI's sequence-first call, which
    only the reference path makes."""
    shapes = []
    text_encoder = getattr(model, "text_encoder", None)
    if text_encoder is not None:
        text_encoder.transformer.resblocks[0].register_forward_hook(lambda m, args, out: shapes.append(args[0].shape))
    return shapes


@pytest.mark.parametrize("name", list(bench.TRAINERS))
def test_reference_design_is_the_same_model_run_the_official_way(weights, name):
    trainer = tiny_trainer(weights, name)
    torch.manual_seed(0)
    for param in trainer.model.parameters():  # zero-initialised parts would make some gradients trivially equal
        if param.requires_grad:
            param.data.add_(0.05 * torch.randn_like(param))
    image, label = bench.random_batch(3, N_CLASSES, 32, torch.device("cpu"))
    shapes = text_tower_inputs(trainer.model)

    fast_logits, fast_loss, fast_grads = loss_and_gradients(trainer, image, label, reference=False)
    assert shapes == []
    ref_logits, ref_loss, ref_grads = loss_and_gradients(trainer, image, label, reference=True)
    assert "encode_instance_text" not in vars(trainer.model)  # the swaps are undone
    assert all("forward_rows" not in vars(block) for block in trainer.model.modules())

    assert torch.allclose(fast_logits, ref_logits, atol=1e-5)
    assert torch.allclose(fast_loss, ref_loss, atol=1e-5)
    for grad, expected in zip(fast_grads, ref_grads):
        assert expected.abs().max() > 0
        assert torch.allclose(grad, expected, atol=1e-5 * max(1.0, expected.abs().max().item()))
    if hasattr(trainer.model, "encode_instance_text"):  # all C class prompts at 77 tokens, per step or image
        assert shapes and all(shape == (77, N_CLASSES, trainer.model.ctx_dim) for shape in shapes)
    else:  # VPT: a classifier computed once per class set, no text in a step
        assert shapes == []


def test_a_reference_that_ignores_deep_text_prompts_is_refused_before_timing(weights, monkeypatch):
    trainer = tiny_trainer(weights, "IVLP")
    image, label = bench.random_batch(2, N_CLASSES, 32, torch.device("cpu"))
    bench.first_run(trainer, image, label, check_reference=True)
    without_deep = bench.reference_instance_text
    monkeypatch.setattr(bench, "reference_instance_text", lambda model, ctx, deep=None: without_deep(model, ctx))
    with pytest.raises(AssertionError, match="IVLP: logits of the fast and the reference design disagree"):
        bench.first_run(trainer, image, label, check_reference=True)


def test_per_class_set_caches_are_filled_before_anything_is_measured(weights):
    """Without a reference to check, the first run still builds VPT's classifier, so the first counted
    (or timed) step is a step like every other."""
    trainer = tiny_trainer(weights, "VPT")
    image, label = bench.random_batch(2, N_CLASSES, 32, torch.device("cpu"))
    bench.first_run(trainer, image, label, check_reference=False)
    step = bench.step_fn(trainer, image, label, reference=False, mode="train")
    assert bench.counted_flops(step) == bench.counted_flops(step) > 0


def test_quick_tiny_run_checks_times_and_counts_every_method(tmp_path):
    # One thread: timings are not checked here, and two threads on a busy machine stall each other.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "tools.bench", "--quick", "--backbone", "tiny", "--flops",
                    "--out", str(tmp_path)], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {(r["method"], r["mode"]) for r in rows} == {(m, mode) for m in bench.METHODS for mode in bench.MODES}
    assert len(rows) == len(bench.METHODS) * len(bench.MODES) and {r["classes"] for r in rows} == {19}
    for row in rows:
        recipe = bench.recipe_cfg(row["trainer"], "unused.pt", 32, cpu=True).DATALOADER.TRAIN_X.BATCH_SIZE
        assert row["batch"] == recipe
        assert row["ms_per_image"] > 0 and row["peak_mib"] >= 0
        assert abs(row["images_per_s"] * row["ms_per_image"] - 1000) < 1e-6 * 1000
        assert abs(row["ratio_to_reference"] * row["speedup_vs_reference"] - 1) < 1e-9
        if row["method"] == row["reference"]:
            assert row["ratio_to_reference"] == row["flop_ratio_to_reference"] == 1
        elif not bench.METHODS[row["method"]][1]:  # strictly less work: at least the last image block's unread rows
            assert row["flop_ratio_to_reference"] < 0.95
    assert {r["reference"] for r in rows if r["trainer"] == "MuPL"} == {"CoCoOp reference"}
    table = (tmp_path / "bench.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # header and one line per record


def test_text_encoder_bench_checks_and_times_all_three_text_paths():
    """It exits non-zero if the truncated or the shared-prefix features differ from the 77-token ones."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "tools.bench_text_encoder", "--quick", "--backbone", "tiny", "--classes", "7", "30"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=300,
    )
    rows = [line.strip("|").split("|") for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert [int(row[0]) for row in rows] == [7, 30]
    for row in rows:
        ref_ms, truncated_ms, shared_ms = (float(cell) for cell in row[2:5])
        assert min(ref_ms, truncated_ms, shared_ms) > 0
        # the speedup is reference over shared prefix; the printed ms are rounded to 0.1
        assert abs(float(row[5].rstrip("x ")) / (ref_ms / shared_ms) - 1) < 0.1
