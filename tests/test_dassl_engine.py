"""The engine end to end through train.py, with a trainer that uses only the Dassl.pytorch API."""
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import LINEAR_PROBE_CONFIG, TESTS, linear_probe_command, make_tiny_folders, run_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path):
    make_tiny_folders(tmp_path / "data")
    (tmp_path / "cfg.yaml").write_text(LINEAR_PROBE_CONFIG)
    return tmp_path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted 3-epoch run, shared by the tests that only read it."""
    workspace = tmp_path_factory.mktemp("finished")
    make_tiny_folders(workspace / "data")
    (workspace / "cfg.yaml").write_text(LINEAR_PROBE_CONFIG)
    result = run_train(workspace, workspace / "out")
    return workspace, workspace / "out", result


def run_train(workspace, out, *extra, env_extra=None, check=True):
    cmd, env = linear_probe_command(workspace, out, *extra, env_extra=env_extra)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def final_accuracy(log_text):
    return float(re.findall(r"\* accuracy: ([\d.]+)%", log_text)[-1])


def test_training_writes_dassl_log_checkpoints_and_result(finished_run):
    _, out, result = finished_run
    assert "warning" not in result.stderr.lower()
    log = (out / "log.txt").read_text()
    assert re.search(r"epoch \[1/3\] batch \[2/4\] time [\d.]+ \([\d.]+\) data [\d.]+ \([\d.]+\) "
                     r"loss [\d.]+ \([\d.]+\) acc [\d.]+ \([\d.]+\) lr 1\.0000e-03 eta \d+:\d\d:\d\d", log)
    assert "lr 1.0000e-02" in log  # epoch 2: the warm-up is over
    end = log.index("Finish training")
    assert log.index("Deploy the last-epoch model") > end
    assert re.search(r"=> result\n\* total: 12\n\* correct: \d+\n\* accuracy: [\d.]+%\n"
                     r"\* error: [\d.]+%\n\* macro_f1: [\d.]+%", log[end:])
    assert re.search(r"Elapsed: \d+:\d\d:\d\d", log)

    folder = out / "linear"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model.pth.tar-3"]
    assert (folder / "checkpoint").read_text().strip() == "model.pth.tar-3"
    checkpoint = torch.load(folder / "model.pth.tar-3", weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["iteration"] == 0
    assert set(checkpoint) >= {"state_dict", "epoch", "optimizer", "scheduler", "val_result", "rng_state"}
    assert any(p.name.startswith("events") for p in (out / "tensorboard").iterdir())


def test_rerun_of_finished_run_skips_to_test_and_keeps_first_log(workspace):
    out = workspace / "out"
    run_train(workspace, out)
    first_log = (out / "log.txt").read_bytes()
    run_train(workspace, out)
    assert (out / "log.txt").read_bytes() == first_log
    second = [p for p in out.iterdir() if p.name.startswith("log.txt-")]
    assert len(second) == 1
    text = second[0].read_text()
    assert "epoch [" not in text and "Finish training" in text and "* accuracy:" in text


@pytest.mark.parametrize("stop_at", [2, 4])  # 3 batches an epoch: the end of epoch 1, mid epoch 2
def test_sigterm_then_rerun_is_bit_identical_to_uninterrupted(finished_run, stop_at):
    workspace, reference, _ = finished_run
    interrupted = workspace / f"interrupted{stop_at}"
    first = run_train(workspace, interrupted, env_extra={"LINEAR_PROBE_SIGTERM_AT": str(stop_at)},
                      check=False)
    assert first.returncode == 128 + signal.SIGTERM
    assert "rerun the same command to resume" in first.stdout
    assert (interrupted / "linear" / "checkpoint").read_text().strip() == "model-resume.pth.tar"
    run_train(workspace, interrupted)

    ref = torch.load(reference / "linear" / "model.pth.tar-3", weights_only=True)
    got = torch.load(interrupted / "linear" / "model.pth.tar-3", weights_only=True)
    for key in ref["state_dict"]:
        assert torch.equal(ref["state_dict"][key], got["state_dict"][key])
    resumed_logs = sorted(p for p in interrupted.iterdir() if p.name.startswith("log.txt-"))
    assert final_accuracy(resumed_logs[-1].read_text()) == final_accuracy((reference / "log.txt").read_text())
    assert not (interrupted / "linear" / "model-resume.pth.tar").exists()


@pytest.mark.parametrize("damage, warning", [
    ("truncate", "is truncated or corrupt"),
    ("garbage", "is not a checkpoint: it holds no state_dict of tensors"),
    ("incomplete", "is not a complete checkpoint: its epoch is missing"),
])
def test_a_bad_newest_checkpoint_falls_back_to_the_previous_good_one(workspace, damage, warning):
    out = workspace / "out"
    run_train(workspace, out, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1")
    newest = out / "linear" / "model.pth.tar-2"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:100])
    elif damage == "garbage":  # a well-formed file that is not a checkpoint
        torch.save({"state_dict": [1, 2, 3], "epoch": 2}, newest)
    else:
        checkpoint = torch.load(newest, weights_only=True)
        del checkpoint["epoch"]
        torch.save(checkpoint, newest)
    result = run_train(workspace, out, "OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1")
    assert warning in result.stdout
    assert "Resumed from epoch 1" in result.stdout
    assert "epoch [2/3]" in result.stdout


def test_a_pointer_file_cannot_lead_outside_its_folder(workspace):
    out = workspace / "out"
    run_train(workspace, out, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1")
    outside = workspace / "elsewhere.pth.tar"
    torch.save(torch.load(out / "linear" / "model.pth.tar-1", weights_only=True), outside)
    (out / "linear" / "checkpoint").write_text("../../elsewhere.pth.tar\n")
    result = run_train(workspace, out, "OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1")
    assert "ignoring" in result.stdout and "which is not a file of that folder" in result.stdout
    assert "Resumed from epoch 2" in result.stdout  # the folder's own newest, not the file outside


def test_keep_last_bounds_the_number_of_epoch_checkpoints(workspace):
    out = workspace / "out"
    run_train(workspace, out, "TRAIN.CHECKPOINT_FREQ", "1", "TRAIN.KEEP_LAST", "2")
    names = sorted(p.name for p in (out / "linear").iterdir())
    assert names == ["checkpoint", "model.pth.tar-2", "model.pth.tar-3"]


def test_eval_only_loads_the_given_epoch(finished_run):
    workspace, out, _ = finished_run
    result = run_train(workspace, workspace / "eval", "--eval-only", "--model-dir", str(out),
                       "--load-epoch", "3")
    assert f'Loading weights to linear from "{out}/linear/model.pth.tar-3" (epoch = 3)' in result.stdout
    assert final_accuracy(result.stdout) == final_accuracy((out / "log.txt").read_text())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval-only"], "--eval-only needs --model-dir"),
        (["--trainer", "LinearProbes"], 'Do you mean "LinearProbe"?'),
        (["DATASET.NAME", "TinyFolder"], 'Do you mean "TinyFolders"?'),
        (["OPTIM.MAX_EPOCHS", "2"], "OPTIM.MAX_EPOCHS"),
        (["OPTIM.MAX_EPOCH", "two"], "OPTIM.MAX_EPOCH"),
    ],
)
def test_bad_requests_fail_before_writing_anything(workspace, extra, message, capsys, monkeypatch):
    """In-process (train.main), as the exit code and message come from there; no subprocess needed."""
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("MUPL_EXTRA_PLUGINS", "fixture_plugins.linear_probe")
    out = workspace / "out"
    code, _, err = run_main(capsys, "--root", workspace / "data", "--seed", "1", "--trainer", "LinearProbe",
                            "--config-file", workspace / "cfg.yaml", "--output-dir", out, *extra)
    assert code == 2
    assert message in err
    assert not out.exists()
