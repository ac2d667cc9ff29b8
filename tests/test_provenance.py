"""run.json and stale runs, through the real scripts, train.py, tools.sweep and tools.report: a fake Oxford
Pets tree, a tiny CLIP, CoOp for one epoch at 1 shot (few-shot runs: no evaluation jobs to wait for)."""
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parse_test_res import read_run_result
from tests.helpers import make_pets_world
from tools import provenance, report
from tools.sweep import cli

REPO = Path(__file__).resolve().parents[1]
CFG = "vit_b16_ctxv1"
LR_A, LR_B = "0.002", "0.004"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Seeds 1 and 2 trained by fewshot.sh, seed 1 at OPTIM.LR 0.002 and seed 2 at 0.004."""
    root, tiny = make_pets_world(tmp_path_factory.mktemp("provenance"))
    env = dict(os.environ, DATA=str(root / "data"), OUTPUT=str(root / "output"), SHOTS="16",
               PYTHON=sys.executable, FORCE="0", RERUN_STALE="0", ALLOW_CODE_CHANGE="0")
    opts = ["MODEL.BACKBONE.NAME", str(tiny), "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "32"]
    world = {"root": root, "tiny": tiny, "env": env, "opts": opts}
    for seed, lr in (("1", LR_A), ("2", LR_B)):
        result = fewshot(world, seed, lr)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return world


def fewshot(world, seed, lr, *flags):
    return subprocess.run(["bash", "scripts/fewshot.sh", *flags, "oxford_pets", "1", seed, "CoOp", CFG,
                           *world["opts"], "OPTIM.LR", lr], cwd=REPO, env=world["env"], capture_output=True,
                          text=True, timeout=180)


def run_dir(world, seed):
    return world["root"] / "output" / "fewshot" / "oxford_pets" / "shots_1" / "CoOp" / CFG / f"seed{seed}"


def recorded_argv(folder):
    """train.py's arguments as run.json recorded them (the command the script ran)."""
    return shlex.split(provenance.read_record(folder)["command"])[2:]


def test_run_json_records_what_made_the_run(world):
    folder = run_dir(world, 1)
    record = provenance.read_record(folder)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert record["status"] == "finished" and record["code"]["git_commit"] == head.strip()
    assert record["request"]["OPTIM.LR"] == float(LR_A) and record["request"]["DATASET.NUM_SHOTS"] == 1
    assert record["config"]["SEED"] == 1 and record["config"]["OPTIM"]["LR"] == float(LR_A)
    assert record["backbone"] == str(world["tiny"]) and record["weights"]["sha256"] == sha256(world["tiny"])
    dataset = world["root"] / "data" / "oxford_pets"
    assert record["split"]["sha256"] == sha256(dataset / "split_zhou_OxfordPets.json")
    assert record["fewshot"]["sha256"] == sha256(dataset / "split_fewshot" / "mupl_shot_1-seed_1.json")
    assert record["metrics"]["accuracy"] == read_run_result(folder)[0]
    assert record["phases"]["build"] > 0 and record["phases"]["train"] > 0
    assert record["environment"]["torch"] and record["started"] <= record["finished"]


def test_a_changed_config_value_weights_or_split_makes_a_finished_run_stale(world, tmp_path):
    folder = run_dir(world, 1)
    argv = recorded_argv(folder)
    assert provenance.check(folder, argv) == (provenance.SAME, [])
    assert provenance.check(folder, [*argv, "OPTIM.LR", LR_B]) == (provenance.STALE, ["OPTIM.LR"])
    for changed, name in ((world["tiny"], "weights"),
                          (world["root"] / "data" / "oxford_pets" / "split_zhou_OxfordPets.json", "split")):
        original = changed.read_bytes()
        try:
            changed.write_bytes(original + b" ")
            assert provenance.check(folder, argv) == (provenance.STALE, [name])
        finally:
            changed.write_bytes(original)
    assert provenance.check(folder, argv) == (provenance.SAME, [])   # same bytes again: same run
    record = provenance.read_record(folder)
    record["code"] = {"git_commit": "0" * 40, "dirty": False}
    assert provenance.differences(record, record["request"], argv[1]) == ["code"]
    assert provenance.differences(record, record["request"], argv[1], allow_code_change=True) == []
    assert provenance.check(tmp_path, argv) == (provenance.UNKNOWN, [])


def test_scripts_stop_on_a_stale_run_in_one_line_and_keep_runs_of_unknown_provenance(world):
    folder = run_dir(world, 2)
    run_id = provenance.read_record(folder)["run_id"]
    assert "so skip this job)" in fewshot(world, "2", LR_B).stdout
    stale = fewshot(world, "2", LR_A)
    assert stale.returncode == 1 and len(stale.stderr.strip().splitlines()) == 1
    assert str(folder) in stale.stderr and "OPTIM.LR" in stale.stderr and "--rerun-stale" in stale.stderr
    assert provenance.read_record(folder)["run_id"] == run_id and not list(folder.parent.glob("seed2.old-*"))
    old = run_dir(world, 3)      # a run made before run.json existed: skipped, said so, never refused
    shutil.copytree(folder, old)
    (old / "run.json").unlink()
    kept = fewshot(world, "3", LR_A)
    assert kept.returncode == 0 and "provenance unknown" in kept.stdout
    # An unfinished run made by another call is not resumed into a mix of both: stale too.
    (old / "run.json").write_text((folder / "run.json").read_text())
    for log in old.glob("log.txt*"):
        log.write_text(log.read_text().split("Finish training")[0])
    unfinished = fewshot(world, "3", LR_B)
    assert unfinished.returncode == 1 and f"stale unfinished run in {old}: it differs from this call in SEED" \
        in unfinished.stderr
    shutil.rmtree(old)


def test_sweep_and_report_see_the_stale_run_and_rerun_stale_reruns_exactly_it(world, monkeypatch, capsys):
    for key, value in world["env"].items():
        monkeypatch.setenv(key, value)
    args = ["fewshot", "--trainers", "CoOp", "--configs", CFG, "--datasets", "oxford_pets", "--shot-list", "1",
            "--seeds", "1", "2", "--slots", "1"]
    opts = [*world["opts"], "OPTIM.LR", LR_B]
    name = f"fewshot/oxford_pets/shots_1/CoOp/{CFG}/seed1"
    assert cli.main([*args, "--dry-run", *opts]) == 0
    plan = capsys.readouterr().out
    assert f"stale: made by something else (--rerun-stale reruns them) (1):\n  {name}: differs in OPTIM.LR" in plan
    assert "finished (1):\n  fewshot/oxford_pets/shots_1/CoOp" in plan and "seed2" in plan
    assert cli.main([*args, *opts]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "1 of the sweep's runs is stale" in error and f"{name} (OPTIM.LR)" in error
    assert "--rerun-stale" in error

    # The report: seeds 1 and 2 were made by different configs, so their cell is marked and listed.
    files, text = report.build_report(str(world["root"] / "output"), seeds=(1, 2))
    assert f"CoOp ({CFG}) oxford_pets 1 shots: seeds differ in config" in text
    assert "≠" in files["fewshot.csv"]
    with pytest.raises(report.ReportError, match="1 cells mix runs"):
        report.build_report(str(world["root"] / "output"), seeds=(1, 2), strict=True)

    seed2 = provenance.read_record(run_dir(world, 2))
    assert cli.main([*args, "--rerun-stale", *opts]) == 0
    out = capsys.readouterr().out
    assert f"started  {name}" in out and f"started  {name[:-1]}2" not in out
    assert len(list(run_dir(world, 1).parent.glob("seed1.old-*"))) == 1
    assert not list(run_dir(world, 1).parent.glob("seed2.old-*"))
    assert provenance.read_record(run_dir(world, 2)) == seed2
    assert provenance.read_record(run_dir(world, 1))["request"]["OPTIM.LR"] == float(LR_B)
    assert "seeds differ" not in report.build_report(str(world["root"] / "output"), seeds=(1, 2))[1]
