"""The demo: the shipped tiny CLIP's zero-shot accuracy on ToyShapes lies in the band docs/demo.md states,
and the demo script runs end to end (reduced) through the real scripts with every method in the report."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clip

import train
from dassl.utils.logger import Logger
from toyworld.make_dataset import SPLIT_FILE, make_dataset
from toyworld.world import class_names

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "toyworld" / "toyclip-seed0.pt"
CHANCE = 100 / 15


def documented_band():
    """{"base": (low, high), "new": (low, high)} from the line `Zero-shot band: base L-H%, new L-H%`."""
    text = (REPO / "docs" / "demo.md").read_text()
    match = re.search(r"Zero-shot band: base (\d+)-(\d+)%, new (\d+)-(\d+)%", text)
    assert match, "docs/demo.md must state the zero-shot band"
    low_base, high_base, low_new, high_new = map(int, match.groups())
    return {"base": (low_base, high_base), "new": (low_new, high_new)}


def zero_shot_accuracy(root, subsample, capsys):
    argv = ["--root", root, "--seed", "1", "--trainer", "ZeroshotCLIP", "--eval-only",
            "--dataset-config-file", REPO / "configs/datasets/toy_shapes.yaml",
            "--config-file", REPO / "configs/trainers/ZeroshotCLIP/vit_b16.yaml",
            "--output-dir", root / f"zs_{subsample}", "MODEL.BACKBONE.NAME", WEIGHTS, "INPUT.SIZE", "(32, 32)",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "100",
            "DATASET.SUBSAMPLE_CLASSES", subsample]
    try:
        assert train.main(train.build_parser().parse_args([str(a) for a in argv])) == 0
    finally:
        if isinstance(sys.stdout, Logger):
            sys.stdout.close()
    out = capsys.readouterr().out
    return float(re.findall(r"\* accuracy: ([\d.]+)%", out)[-1])


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_data")
    make_dataset(str(root))          # the demo's full dataset: 24/8/16 images per class, seed 0
    return root


def test_shipped_weights_zero_shot_in_the_documented_band(toy_root, capsys):
    for subsample, (low, high) in documented_band().items():
        accuracy = zero_shot_accuracy(toy_root, subsample, capsys)
        assert low <= accuracy <= high, f"{subsample}: {accuracy}% outside {low}-{high}%"
        assert accuracy > 3 * CHANCE


def encoded_split(model, preprocess, root, key):
    folder = root / "toy_shapes"
    items = json.loads((folder / SPLIT_FILE).read_text())[key]
    images = torch.stack([preprocess(Image.open(folder / "images" / rel)) for rel, _, _ in items])
    with torch.no_grad():
        features = F.normalize(model.encode_image(images), dim=-1)
    return features, torch.tensor([label for _, label, _ in items])


def test_shipped_weights_leave_room_for_prompt_learning(toy_root):
    """The demo means something only if the image features know more than zero-shot uses: a 16-shot
    linear probe on the base classes (a classifier prompt learning can approach) must beat zero-shot
    by a wide margin."""
    torch.manual_seed(0)
    model, preprocess = clip.load(str(WEIGHTS))
    model = model.float().eval()
    train_x, train_y = encoded_split(model, preprocess, toy_root, "train")
    test_x, test_y = encoded_split(model, preprocess, toy_root, "test")
    base = list(range(len(class_names()) // 2))
    shots = torch.cat([torch.nonzero(train_y == c).flatten()[:16] for c in base])
    on_base = torch.isin(test_y, torch.tensor(base))
    with torch.no_grad():
        tokens = clip.tokenize([f"a photo of a {name}." for name in class_names()[: len(base)]])
        text = F.normalize(model.encode_text(tokens), dim=-1)
    zero_shot = ((test_x[on_base] @ text.t()).argmax(1) == test_y[on_base]).float().mean().item()
    weights = text.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(50 * train_x[shots] @ weights.t(), train_y[shots])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe = ((test_x[on_base] @ weights.t()).argmax(1) == test_y[on_base]).float().mean().item()
    assert zero_shot > 3 * CHANCE / 100
    assert probe > zero_shot + 0.15, f"probe {probe:.3f} vs zero-shot {zero_shot:.3f}"


def run_demo(demo_dir, **extra_env):
    env = dict(os.environ, DEMO_QUICK="1", DEMO_DIR=str(demo_dir), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               **extra_env)
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(demo_dir / "report" / "base2new.csv") as handle:
        return {row["method"].split(" ")[0]: row for row in csv.DictReader(handle) if row["source"] == "measured"}


def test_reduced_demo_end_to_end(tmp_path):
    stale_run = tmp_path / "output" / "base2new" / "old_run.txt"   # made by another world: kept, moved aside
    stale_run.parent.mkdir(parents=True)
    stale_run.write_text("earlier result")
    rows = run_demo(tmp_path)
    assert set(rows) == {"ZeroshotCLIP", "CoOp", "CoCoOp", "KgCoOp", "ProGrad", "IVLP", "VPT", "MaPLe", "PromptSRC",
                         "MuPL"}
    assert all(row["dataset"] == "ToyShapes" for row in rows.values())
    for method, row in rows.items():
        assert float(row["base"]) > 2 * CHANCE, (method, row)
    assert (tmp_path / "report" / "base2new.png").stat().st_size > 0
    assert "## Missing or unfinished runs\n\nNone." in (tmp_path / "report" / "report.md").read_text()
    moved = list(tmp_path.glob("output.stale-*/base2new/old_run.txt"))
    assert [p.read_text() for p in moved] == ["earlier result"]
    assert (tmp_path / "output" / "demo-inputs.txt").read_text().startswith("{")

    # A rerun for more seeds, of some trainers only, reuses seed 1's runs and reports the spread over seeds.
    runs = tmp_path / "output" / "base2new" / "train_base" / "toy_shapes" / "shots_4" / "CoOp" / "vit_b16_ctxv1"
    seed1_log = (runs / "seed1" / "log.txt").read_text()
    rows = run_demo(tmp_path, DEMO_TRAINERS="ZeroshotCLIP CoOp", DEMO_SEEDS="1 2")
    assert set(rows) == {"ZeroshotCLIP", "CoOp"} and all(row["all_seeds"] == "True" for row in rows.values())
    assert float(rows["ZeroshotCLIP"]["base_std"]) == 0.0   # zero-shot does not depend on the seed
    assert sorted(p.name for p in runs.iterdir()) == ["seed1", "seed2"]
    assert (runs / "seed1" / "log.txt").read_text() == seed1_log   # skipped, not retrained
    assert "±" in (tmp_path / "report" / "report.md").read_text()
