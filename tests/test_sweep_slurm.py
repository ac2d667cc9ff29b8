"""tools.sweep --launcher slurm on a real single-node Slurm (tools/slurm/start_local_slurm.sh, which
installs Debian's slurm-wlm and munge when missing): submitit job arrays, afterok dependencies, a job
stopped by Slurm's signal and requeued that resumes its run, a real failure that is not requeued, and the
launcher's bookkeeping (its own running job followed, each submission recorded as Slurm accepts it, one
sweep submitting at a time, what the partition offers checked first, status and cancel)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clip.tiny import save_tiny_clip
from dassl.utils.runlock import read_holder
from parse_test_res import read_run_result
from tests.fake_trees import make_fake_oxford_pets
from tools.sweep import cli
from tools.sweep.slurm import ACTIVE

REPO = Path(__file__).resolve().parents[1]
CFG = "vit_b16_c4_ep10_batch1_ctxv1"
# The jobs' PYTHON: the real one, except that a training run that finished lingers (as a process that
# still cleans up) until SIGTERM; while training, SIGTERM goes on to train.py.
LINGERING_PYTHON = """#!/bin/bash
[[ " $* " == *"/train.py "* && " $* " != *" --eval-only "* ]] || exec {python} "$@"
trap 'kill -TERM $child' TERM
{python} "$@" & child=$!
while :; do wait $child; code=$?; kill -0 $child 2>/dev/null || break; done
(( code == 0 )) || exit $code
sleep 120 & sleeper=$!
trap 'kill $sleeper; exit 143' TERM
wait $sleeper
"""
# sbatch that fails on its third call, as a cluster's sbatch does when slurmctld times out
FAILING_SBATCH = """#!/bin/bash
calls=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $calls > {count}
(( calls != 3 )) || {{ echo "sbatch: error: Batch job submission failed: Socket timed out" >&2; exit 1; }}
exec {sbatch} "$@"
"""


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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data (Oxford Pets, and a dtd folder without its files: its training fails for a real reason) and a
    tiny CLIP."""
    root = tmp_path_factory.mktemp("slurm")
    make_fake_oxford_pets(root / "data")
    (root / "data" / "dtd").mkdir()
    save_tiny_clip(str(root / "tiny.pt"), arch="vit", seed=0)
    return root


@pytest.fixture
def cancel_afterwards(slurm_conf, tmp_path):
    """Whatever a test leaves in the queue (it failed half-way) is cancelled, not left to hold the node."""
    yield
    env = {**os.environ, "SLURM_CONF": slurm_conf}
    left = [job_id for job_id, (_, state) in submitted_from(env, tmp_path).items() if state in ACTIVE]
    if left:
        slurm(env, "scancel", *left)


def environment(slurm_conf, world, output, **extra):
    return {**os.environ, "SLURM_CONF": slurm_conf, "DATA": str(world / "data"), "OUTPUT": str(output), "SHOTS": "2",
            "PYTHON": sys.executable, **extra}


def sweep_args(world, *extra, epochs=8):
    return ["base2new", "--trainers", "CoCoOp", "--seeds", "1", "--datasets", "oxford_pets", "dtd",
            "--launcher", "slurm", "--time", "10", *extra, "MODEL.BACKBONE.NAME", str(world / "tiny.pt"),
            "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", str(epochs), "TRAIN.CHECKPOINT_FREQ", "1",
            "DATALOADER.NUM_WORKERS", "0"]


CPU_JOBS = ("--gpus-per-job", "0", "--cpus-per-job", "1")


def sweep_here(monkeypatch, capsys, env, args):
    """python -m tools.sweep ARGS in this process, with ``env``: (exit code, stdout, stderr)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def slurm(env, *command):
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def submitted_from(env, log_dir):
    """{job id: (name, state)} of the Slurm jobs submitted from ``log_dir`` (their batch file is there)."""
    rows = (line.split("|") for line in slurm(env, "squeue", "-h", "-r", "-t", "all", "-o", "%i|%j|%T|%o").splitlines())
    return {job_id: (name, state) for job_id, name, state, command in rows if command.startswith(str(log_dir))}


def wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def run_dir(output, split, dataset="oxford_pets"):
    return output / "base2new" / split / dataset / "shots_2" / "CoCoOp" / CFG / "seed1"


def test_submissions_are_checked_first_recorded_as_accepted_and_named_after_their_runs(
        slurm_conf, world, tmp_path, monkeypatch, capsys, cancel_afterwards):
    output = tmp_path / "output"
    log_dir = output / "sweep"
    env = environment(slurm_conf, world, output)
    # the defaults ask for a GPU and 8 CPUs, which this node lacks: one line, before anything is submitted
    code, out, err = sweep_here(monkeypatch, capsys, env, sweep_args(world, "--no-wait"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--gpus-per-job 1: the nodes of partition 'local' have no GPUs (sinfo)" in err
    assert not list(output.rglob("*.pkl")) and submitted_from(env, log_dir) == {}

    # sbatch fails on its third call (the second test): the trainings' array and the first test are
    # queued, recorded, and not submitted again by the rerun; nothing of the refused one is left behind
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAILING_SBATCH.format(count=tmp_path / "calls", sbatch=shutil.which("sbatch")))
    (bin_dir / "sbatch").chmod(0o755)
    held = sweep_args(world, *CPU_JOBS, "--no-wait", "--sbatch", "hold", "--qos", "normal", "--sbatch",
                      "comment=mupl-test", "--setup", "export SWEEP_SETUP=1", "--mail-type", "END,FAIL",
                      "--mail-user", "me@example.org")
    failing = dict(env, PATH=f"{bin_dir}:{os.environ['PATH']}")
    code, out, err = sweep_here(monkeypatch, capsys, failing, held)
    assert code == 2 and err.count("\n") == 1, out + err
    assert "sbatch failed (sbatch: error: Batch job submission failed: Socket timed out)" in err
    assert "the 3 jobs submitted before it are recorded in" in err
    ledger = json.loads((log_dir / "slurm_jobs.json").read_text())
    assert sorted(ledger) == sorted(str(run_dir(output, split, dataset)) for split, dataset in
                                    (("train_base", "oxford_pets"), ("train_base", "dtd"), ("test_new", "oxford_pets")))
    assert not list((log_dir / "slurm").glob("*.pkl"))

    code, out, err = sweep_here(monkeypatch, capsys, env, held)
    assert code == 0 and "Submitted 1 jobs to Slurm, 3 were queued already" in out, out + err
    ledger = json.loads((log_dir / "slurm_jobs.json").read_text())
    jobs = submitted_from(env, log_dir)
    assert sorted(jobs) == sorted(ledger.values())                 # each run submitted once
    assert sorted(name for name, _ in jobs.values()) == ["b2n-CoCoOp-dtd-s1", "b2n-CoCoOp-oxford_pets-s1",
                                                          "b2n-CoCoOp-s1", "b2n-CoCoOp-s1"]
    test_id, train_id = ledger[str(run_dir(output, "test_new"))], ledger[str(run_dir(output, "train_base"))]
    batch = (log_dir / "slurm" / test_id / f"{test_id}_submission.sh").read_text()
    for line in (f"#SBATCH --dependency=afterok:{train_id}\n", "#SBATCH --qos=normal\n",
                 "#SBATCH --comment=mupl-test\n", "#SBATCH --hold\n", "\nexport SWEEP_SETUP=1\n",
                 "#SBATCH --mail-type=END,FAIL\n", "#SBATCH --mail-user=me@example.org\n"):
        assert line in batch

    code, out, _ = sweep_here(monkeypatch, capsys, env, ["status", *held])
    assert code == 0 and "Sweep: 4 queued" in out
    assert f"queued    base2new/test_new/dtd/shots_2/CoCoOp/{CFG}/seed1  (Slurm job " in out
    assert out.count(": PENDING, JobHeldUser)") == 4
    code, out, _ = sweep_here(monkeypatch, capsys, env, ["cancel", *sweep_args(world)])
    assert code == 0 and "Cancelled 4 jobs of this sweep: " in out
    assert {state for _, state in submitted_from(env, log_dir).values()} == {"CANCELLED"}

    # --max-running 1: one chain, each job after the one before it (afterany), tests after their training
    output = tmp_path / "chained"
    env = environment(slurm_conf, world, output)
    code, out, err = sweep_here(monkeypatch, capsys, env, sweep_args(world, *CPU_JOBS, "--no-wait", "--sbatch", "hold",
                                                                     "--max-running", "1"))
    assert code == 0 and "Submitted 4 jobs" in out, out + err
    ledger = json.loads((output / "sweep" / "slurm_jobs.json").read_text())
    train, dtd_train, test, dtd_test = (ledger[str(run_dir(output, split, dataset))] for split, dataset in (
        ("train_base", "oxford_pets"), ("train_base", "dtd"), ("test_new", "oxford_pets"), ("test_new", "dtd")))
    dependencies = {job_id: [line for line in (output / "sweep" / "slurm" / job_id / f"{job_id}_submission.sh")
                             .read_text().splitlines() if "--dependency" in line]
                    for job_id in (train, dtd_train, test, dtd_test)}
    assert dependencies == {train: [], dtd_train: [f"#SBATCH --dependency=afterany:{train}"],
                            test: [f"#SBATCH --dependency=afterok:{train},afterany:{dtd_train}"],
                            dtd_test: [f"#SBATCH --dependency=afterok:{dtd_train},afterany:{test}"]}
    code, out, _ = sweep_here(monkeypatch, capsys, env, ["cancel", *sweep_args(world)])
    assert "Cancelled 4 jobs of this sweep" in out


def test_two_sweeps_at_once_on_one_output_folder_submit_each_job_once(
        slurm_conf, world, tmp_path, monkeypatch, capsys, cancel_afterwards):
    output = tmp_path / "output"
    for key, value in environment(slurm_conf, world, output).items():
        monkeypatch.setenv(key, value)
    args = sweep_args(world, *CPU_JOBS, "--no-wait", "--sbatch", "hold")
    codes = []
    sweeps = [threading.Thread(target=lambda: codes.append(cli.main(args))) for _ in range(2)]   # two "terminals"
    for sweep in sweeps:
        sweep.start()
    for sweep in sweeps:
        sweep.join(timeout=120)
    out, err = capsys.readouterr()
    assert codes == [0, 0], out + err
    assert out.count("Submitted 4 jobs to Slurm (ledger") == 1, out
    assert out.count("Submitted 0 jobs to Slurm, 4 were queued already") == 1, out
    assert len(submitted_from(environment(slurm_conf, world, output), output / "sweep")) == 4


def test_slurm_follows_its_own_running_job_requeues_a_stopped_one_and_never_fails_a_finished_run(
        slurm_conf, world, tmp_path, monkeypatch, capsys, cancel_afterwards):
    output = tmp_path / "output"
    python = tmp_path / "python"
    python.write_text(LINGERING_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    env = environment(slurm_conf, world, output, PYTHON=str(python))

    def args(*extra):   # one requeue allowed: the timeout signal in the second attempt finds no requeue left
        return sweep_args(world, *CPU_JOBS, "--poll", "1", "--max-requeues", "1", *extra)

    code, out, err = sweep_here(monkeypatch, capsys, env, args("--no-wait"))
    assert code == 0 and "Submitted 4 jobs to Slurm (ledger" in out, out + err
    train = run_dir(output, "train_base")
    ledger = json.loads((output / "sweep" / "slurm_jobs.json").read_text())
    train_id, dtd_test_id = ledger[str(train)], ledger[str(run_dir(output, "test_new", "dtd"))]
    wait_for(lambda: list(train.glob("prompt_learner/model.pth.tar-*")), 180, "the first epoch")
    trainer_pid = read_holder(str(train))["pid"]
    os.kill(trainer_pid, signal.SIGSTOP)               # the sweep's own job, running and holding its folder
    # dtd's training fails, and Slurm cancels its test
    wait_for(lambda: slurm(env, "squeue", "-h", "-t", "all", "-j", dtd_test_id, "-o", "%T") == "CANCELLED", 120,
             "dtd's failure")

    code, out, err = sweep_here(monkeypatch, capsys, env, args("--dry-run"))
    assert f"queued in Slurm already (2):\n  base2new/train_base/oxford_pets" in out, out + err
    assert "held by another process" not in out
    sweep = subprocess.Popen([sys.executable, "-m", "tools.sweep", *args()], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    wait_for(lambda: lines.append(sweep.stdout.readline()) or lines[-1].startswith("Submitted"), 120, "the sweep")
    assert lines[-1].startswith("Submitted 2 jobs to Slurm, 2 were queued already"), lines   # dtd's, again
    os.kill(trainer_pid, signal.SIGCONT)
    # the signal Slurm sends --signal-delay seconds before the time limit: submitit checkpoints, requeues
    slurm(env, "scancel", "--signal=USR2", train_id)
    # Slurm holds a requeued job back for two minutes (reason BeginTime); let it start in 2 s instead (not
    # at once: slurmd refuses to launch a job in the same second as it revoked the job's previous run)
    wait_for(lambda: slurm(env, "squeue", "-h", "-j", train_id, "-o", "%T %r") == "PENDING BeginTime", 60,
             "the requeue")
    slurm(env, "scontrol", "update", f"JobId={train_id}", "StartTime=now+2")
    # the resumed run finishes; then the timeout signal comes, with no requeue left
    wait_for(lambda: read_run_result(str(train))[0] is not None, 180, "the resumed run")
    assert slurm(env, "squeue", "-h", "-j", train_id, "-o", "%T") == "RUNNING"
    slurm(env, "scancel", "--signal=USR2", train_id)
    out = "".join(lines) + sweep.communicate(timeout=300)[0]

    assert sweep.returncode == 1, out
    assert "Interrupted by signal 15" in (train / "log.txt").read_text()
    resumed = [log.read_text() for log in sorted(train.glob("log.txt-*"))]
    assert len(resumed) == 1, out
    assert "Resumed from epoch" in resumed[0] and "epoch [1/" not in resumed[0] and "epoch [8/8]" in resumed[0]
    train_job = slurm(env, "scontrol", "show", "job", train_id)
    assert "Restarts=1 " in train_job and "JobState=COMPLETED" in train_job
    test = run_dir(output, "test_new")
    assert read_run_result(str(test))[0] is not None
    assert f"finished base2new/test_new/oxford_pets/shots_2/CoCoOp/{CFG}/seed1" in out

    ledger = json.loads((output / "sweep" / "slurm_jobs.json").read_text())
    dtd_train = f"base2new/train_base/dtd/shots_2/CoCoOp/{CFG}/seed1"
    dtd_id = ledger[str(output / dtd_train)]
    dtd_job = slurm(env, "scontrol", "show", "job", dtd_id)
    assert "JobState=FAILED" in dtd_job and "Restarts=0 " in dtd_job
    failed = out.split("\nFailed:\n")[1]
    assert (f"- {dtd_train}: Slurm job {dtd_id} FAILED (NonZeroExitCode): tools.sweep.slurm_job.JobFailed: "
            "exit code 1") in failed
    assert "bash scripts/base2new_train.sh dtd 1 CoCoOp" in failed and "split_zhou_DescribableTextures.json" in failed
    assert f"- base2new/test_new/dtd/shots_2/CoCoOp/{CFG}/seed1" in out.split("Not run: a job they need failed:")[1]
    assert "== Sweep: 2 finished, 1 failed, 1 not run" in out
