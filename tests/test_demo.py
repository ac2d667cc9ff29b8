"""The demo: the shipped tiny CLIP's zero-shot accuracy on ToyShapes lies in the band docs/demo.md states,
and the demo script runs end to end (reduced) through the real scripts with every method in the report."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path


import train
from dassl.utils.logger import Logger
from toyworld.make_dataset import make_dataset

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


def test_shipped_weights_zero_shot_in_the_documented_band(tmp_path, capsys):
    make_dataset(str(tmp_path))          # the demo's full dataset: 24/8/16 images per class, seed 0
    for subsample, (low, high) in documented_band().items():
        accuracy = zero_shot_accuracy(tmp_path, subsample, capsys)
        assert low <= accuracy <= high, f"{subsample}: {accuracy}% outside {low}-{high}%"
        assert accuracy > 3 * CHANCE


def test_reduced_demo_end_to_end(tmp_path):
    env = dict(os.environ, DEMO_QUICK="1", DEMO_DIR=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "report" / "base2new.csv") as handle:
        rows = {row["method"].split(" ")[0]: row for row in csv.DictReader(handle) if row["source"] == "measured"}
    assert set(rows) == {"ZeroshotCLIP", "CoOp", "CoCoOp", "MuPL"}
    assert all(row["dataset"] == "ToyShapes" for row in rows.values())
    for method in ("CoOp", "CoCoOp", "MuPL"):
        assert float(rows[method]["base"]) > 2 * CHANCE, (method, rows[method])
    assert (tmp_path / "report" / "base2new.png").stat().st_size > 0
    assert "## Missing or unfinished runs\n\nNone." in (tmp_path / "report" / "report.md").read_text()
