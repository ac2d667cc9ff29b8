"""tools.sweep --launcher slurm on a real single-node Slurm (tools/slurm/start_local_slurm.sh, which
installs Debian's slurm-wlm and munge when missing): submitit job arrays, afterok dependencies, a job
stopped by Slurm's signal and requeued that resumes its run, and a real failure that is not requeued."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clip.tiny import save_tiny_clip
from parse_test_res import read_run_result
from tests.fake_trees import make_fake_oxford_pets

REPO = Path(__file__).resolve().parents[1]
CFG = "vit_b16_c4_ep10_batch1_ctxv1"


@pytest.fixture(scope="module")
def slurm_conf():
    """SLURM_CONF of a running Slurm; stopped afterwards when this fixture started it."""
    if os.geteuid() != 0 and not shutil.which("sbatch"):
        pytest.skip("no Slurm here, and installing it (tools/slurm/start_local_slurm.sh) needs root")
    started = subprocess.run(["bash", "tools/slurm/start_local_slurm.sh"], cwd=REPO, capture_output=True,
                             text=True, timeout=900)
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip().split("=", 1)[1]
    if "already running" not in started.stderr:
        subprocess.run(["bash", "tools/slurm/stop_local_slurm.sh"], cwd=REPO, timeout=60, check=True)


def slurm(env, *command):
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def test_slurm_requeues_a_stopped_job_which_resumes_and_never_requeues_a_failure(slurm_conf, tmp_path):
    make_fake_oxford_pets(tmp_path / "data")             # no dtd: its training fails for a real reason
    save_tiny_clip(str(tmp_path / "tiny.pt"), arch="vit", seed=0)
    output = tmp_path / "output"
    env = dict(os.environ, SLURM_CONF=slurm_conf, DATA=str(tmp_path / "data"), OUTPUT=str(output), SHOTS="2",
               PYTHON=sys.executable)
    command = [sys.executable, "-m", "tools.sweep", "base2new", "--trainers", "CoCoOp", "--seeds", "1",
               "--launcher", "slurm", "--time", "10", "--gpus-per-job", "0", "--cpus-per-job", "1", "--poll", "1",
               "--datasets", "oxford_pets", "dtd",
               "MODEL.BACKBONE.NAME", str(tmp_path / "tiny.pt"), "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "8",
               "TRAIN.CHECKPOINT_FREQ", "1", "DATALOADER.NUM_WORKERS", "0"]
    sweep = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    train = output / "base2new" / "train_base" / "oxford_pets" / "shots_2" / "CoCoOp" / CFG / "seed1"
    wait_for(lambda: list(train.glob("prompt_learner/model.pth.tar-*")), 180, "the first epoch")
    ledger = json.loads((output / "sweep" / "slurm_jobs.json").read_text())
    train_id = ledger[str(train)]
    # the signal Slurm sends --signal-delay seconds before the time limit: submitit checkpoints, requeues
    slurm(env, "scancel", "--signal=USR2", train_id)
    # Slurm holds a requeued job back for two minutes (reason BeginTime); let it start in 2 s instead (not
    # at once: slurmd refuses to launch a job in the same second as it revoked the job's previous run)
    wait_for(lambda: slurm(env, "squeue", "-h", "-j", train_id, "-o", "%T %r") == "PENDING BeginTime", 60,
             "the requeue")
    slurm(env, "scontrol", "update", f"JobId={train_id}", "StartTime=now+2")
    out = sweep.communicate(timeout=300)[0]

    assert sweep.returncode == 1, out
    assert "Interrupted by signal 15" in (train / "log.txt").read_text()
    resumed = [log.read_text() for log in sorted(train.glob("log.txt-*"))]
    assert len(resumed) == 1, out
    assert "Resumed from epoch" in resumed[0] and "epoch [1/" not in resumed[0] and "epoch [8/8]" in resumed[0]
    assert "Restarts=1 " in slurm(env, "scontrol", "show", "job", train_id)
    test = output / "base2new" / "test_new" / "oxford_pets" / "shots_2" / "CoCoOp" / CFG / "seed1"
    assert read_run_result(train)[0] is not None and read_run_result(test)[0] is not None
    test_id = ledger[str(test)]
    assert f"--dependency=afterok:{train_id}\n" in (output / "sweep" / "slurm" / test_id /
                                                    f"{test_id}_submission.sh").read_text()

    dtd_train = f"base2new/train_base/dtd/shots_2/CoCoOp/{CFG}/seed1"
    dtd_id = ledger[str(output / dtd_train)]
    assert dtd_id.split("_")[0] == train_id.split("_")[0]          # the two trainings: one job array
    dtd_job = slurm(env, "scontrol", "show", "job", dtd_id)
    assert "JobState=FAILED" in dtd_job and "Restarts=0 " in dtd_job
    failed = out.split("\nFailed:\n")[1]
    assert f"- {dtd_train}: Slurm job {dtd_id} FAILED: tools.sweep.slurm_job.JobFailed: exit code 1" in failed
    assert "bash scripts/base2new_train.sh dtd 1 CoCoOp" in failed and "dtd is missing" in failed
    assert f"- base2new/test_new/dtd/shots_2/CoCoOp/{CFG}/seed1" in out.split("Not run: a job they need failed:")[1]

    command.remove("dtd")                                          # the same sweep again: nothing to submit
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Submitted 0 jobs" in again.stdout and "== Sweep: 2 finished" in again.stdout
