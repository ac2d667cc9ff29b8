"""tools/bench.py: its MuPL reference is MuPL itself (logits and gradients), and the CLI writes its records.

CoCoOp's fast path against the per-image 77-token loop, logits and gradients, is
tests/test_trainers_baselines.py::test_cocoop_batched_truncated_text_matches_the_per_image_loop.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from clip.tiny import build_tiny_clip
from tools import bench
from trainers import mupl
from tests.helpers import assert_same_loss_gradients
from trainers.common import cast_clip, default_trainer_node, freeze_all_but_prompt_learner

ROOT = Path(__file__).resolve().parents[1]


def test_mupl_reference_path_gives_the_same_logits_and_gradients():
    clip_model = cast_clip(build_tiny_clip("vit"), "fp32")
    cfg = default_trainer_node(mupl, "MUPL")
    cfg.FTP.ZERO_INIT = False  # zero-initialised meta-nets would make some gradients trivially equal (zero)
    cfg.TVP.DEPTH = 2
    torch.manual_seed(0)
    model = mupl.MuPLCLIP(cfg, bench.class_names(7), clip_model)
    freeze_all_but_prompt_learner(model)
    params = list(model.prompt_learner.parameters())
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 6])

    fast = bench.logits(model, images, reference=False)
    slow = bench.logits(model, images, reference=True)
    assert "encode_instance_text" not in vars(model)  # the swaps are undone
    assert "forward_rows" not in vars(model.image_encoder.transformer.resblocks[-1])
    assert torch.allclose(fast, slow, atol=1e-5)
    assert_same_loss_gradients(fast, slow, labels, params)


def test_quick_tiny_run_writes_one_record_per_configuration(tmp_path):
    # One thread: timings are not checked here, and two threads on a busy machine stall each other.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "tools.bench", "--quick", "--backbone", "tiny", "--out", str(tmp_path)],
                   cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    configs = {(r["method"], r["classes"], r["batch"], r["mode"]) for r in rows}
    assert len(configs) == len(rows) == len(bench.METHODS) * 2 * 1 * len(bench.MODES)
    for row in rows:
        assert row["ms_per_image"] > 0
        assert abs(row["images_per_s"] * row["ms_per_image"] - 1000) < 1e-6 * 1000
        assert row["peak_mib"] >= 0
        if row["method"] == bench.REFERENCE:
            assert row["ratio_to_reference"] == row["speedup_vs_reference"] == 1
        else:
            assert abs(row["ratio_to_reference"] * row["speedup_vs_reference"] - 1) < 1e-9
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
