"""Bad input that needs real processes: a signal during the final evaluation, two runs into one folder,
a full or read-only filesystem. Each train.py runs the LinearProbe fixture trainer (seconds, mostly
start-up) and the independent process sequences run side by side; the reruns, which only need to be
real runs, go in-process. The in-process cases of the catalogue are in test_bad_inputs.py.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dassl.utils.runlock import folder_in_use
from tests.helpers import LINEAR_PROBE_CONFIG, REPO, TESTS, linear_probe_command, make_tiny_folders, run_main
from tests.test_bad_inputs import assert_one_line, snapshot

TIMEOUT = 120
MOUNT_REFUSED = 99
EVAL_STOPPED = ("Interrupted by signal {} during the evaluation on the *test* set, after batch 1 of 2; rerun "
                "the same command to evaluate again")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_tiny_folders(root / "data")
    (root / "cfg.yaml").write_text(LINEAR_PROBE_CONFIG)
    return root


def start(workspace, out, *extra, env_extra=None):
    cmd, env = linear_probe_command(workspace, out, *extra, env_extra={"OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    """(exit code, stdout, stderr)."""
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return process.returncode, stdout, stderr


def run(workspace, out, *extra, env_extra=None):
    return finish(start(workspace, out, *extra, env_extra=env_extra))


@pytest.fixture
def run_in_process(workspace, capsys, monkeypatch):
    """The same train.py command, in this process: (exit code, stdout, stderr)."""
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("MUPL_EXTRA_PLUGINS", "fixture_plugins.linear_probe")

    def run_train(out, *extra, env_extra=None):
        for key, value in (env_extra or {}).items():
            monkeypatch.setenv(key, value)
        argv, _ = linear_probe_command(workspace, out, *extra)
        return run_main(capsys, *argv[2:])  # without the interpreter and train.py

    return run_train


def lib_sh(function, *args, **env):
    """A function of scripts/lib.sh, as the run scripts call it."""
    return subprocess.run(["bash", "-c", f'source scripts/lib.sh && {function} "$@"', "lib.sh", *map(str, args)],
                          cwd=REPO, env=dict(os.environ, PYTHON=sys.executable, **env), capture_output=True,
                          text=True, timeout=TIMEOUT)


def start_holding(workspace, out, release, *extra):
    """A run that holds ``out`` and waits, at its first training step, until the file ``release`` exists."""
    process = start(workspace, out, *extra, env_extra={"LINEAR_PROBE_WAIT_FOR": str(release)})
    deadline = time.time() + TIMEOUT
    while not release.with_name(release.name + ".waiting").exists():
        assert process.poll() is None and time.time() < deadline, finish(process)
        time.sleep(0.05)
    assert folder_in_use(out)
    return process


def run_on_tmpfs(workspace, name, options, *extra):
    """train.py writing into a fresh tmpfs mounted with ``options``, in its own user and mount namespace
    (``unshare -rm``: no root needed where user namespaces are allowed; skipped where they are not)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: no private tmpfs can be mounted")
    mount_point = workspace / name
    mount_point.mkdir()
    cmd, env = linear_probe_command(workspace, mount_point / "out", *extra, env_extra={"OMP_NUM_THREADS": "1"})
    script = f'mount -t tmpfs -o {options} tmpfs "$0" 2>/dev/null || exit {MOUNT_REFUSED}; exec "$@"'
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(mount_point), *cmd], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode == MOUNT_REFUSED or "unshare failed" in result.stderr:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()[:200]}")
    return result.returncode, result.stdout, result.stderr, mount_point / "out"


# --- the process sequences, independent of each other ----------------------------------------------

def sigterm_in_final_test(workspace):
    """SIGTERM during a training run's final test (the trainer signals itself, as a scheduler would)."""
    out = workspace / "final_test"
    stopped = run(workspace, out, env_extra={"LINEAR_PROBE_SIGNAL_IN_TEST": str(int(signal.SIGTERM))})
    return {"out": out, "stopped": stopped, "unfinished": lib_sh("run_finished", out, "Finish training")}


def second_run_into_a_held_folder(workspace):
    """A second train.py and the scripts' prepare_run (FORCE=1) into the folder of a run that holds it."""
    out, go = workspace / "shared", workspace / "go"
    first = start_holding(workspace, out, go)
    try:
        before = snapshot(out)
        second = run(workspace, out, "--seed", "2")
        after_second = snapshot(out)
        script = lib_sh("prepare_run", out, "Finish training", FORCE="1")
        after_script = snapshot(out)
    finally:
        go.touch()
    return {"out": out, "pid": first.pid, "second": second, "script": script, "first": finish(first),
            "unchanged": before == after_second == after_script}


def sigkill_while_holding(workspace):
    """SIGKILL to the main process alone; its DataLoader workers live on until they notice (seconds)."""
    out = workspace / "killed"
    first = start_holding(workspace, out, workspace / "never", "DATALOADER.NUM_WORKERS", "2")
    first.kill()
    first.wait()
    first.stdout.close()  # not read: the orphaned workers keep the pipes open while they live
    first.stderr.close()
    return out


def full_disk(workspace):
    """8 KiB: the lock file takes one page, the log fills the other, then the first checkpoint fails."""
    return run_on_tmpfs(workspace, "full", "size=8k", "TRAIN.CHECKPOINT_FREQ", "1")


def read_only_folder(workspace):
    return run_on_tmpfs(workspace, "read_only", "ro,size=64k")


SEQUENCES = (sigterm_in_final_test, second_run_into_a_held_folder, sigkill_while_holding, full_disk,
             read_only_folder)


@pytest.fixture(scope="module")
def ran(workspace):
    """Every sequence, three at a time (one thread per process, on two cores); a sequence's failure or
    skip surfaces in its own tests."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return {sequence.__name__: pool.submit(sequence, workspace) for sequence in SEQUENCES}


# --- Ctrl-C / SIGTERM during an evaluation ---------------------------------------------------------

def test_sigterm_in_the_final_test_stops_it_with_one_line_and_the_rerun_only_tests(ran, run_in_process):
    result = ran["sigterm_in_final_test"].result()
    out, (code, printed, err) = result["out"], result["stopped"]
    assert code == 143 and "Traceback" not in err
    line = EVAL_STOPPED.format(int(signal.SIGTERM))
    assert printed.splitlines()[-1] == line == (out / "log.txt").read_text().splitlines()[-1]
    assert "Finish training" in printed and "* accuracy:" not in printed
    assert result["unfinished"].returncode == 1  # the scripts rerun a log without a final result

    code, printed, err = run_in_process(out)
    assert code == 0, err
    assert "Resumed from epoch 3" in printed and "epoch [" not in printed and "* accuracy:" in printed
    assert lib_sh("run_finished", out, "Finish training").returncode == 0


def test_ctrl_c_during_eval_only_stops_it_with_one_line(ran, run_in_process, workspace):
    trained = ran["second_run_into_a_held_folder"].result()["out"]
    out = workspace / "eval_only"
    code, printed, err = run_in_process(out, "--eval-only", "--model-dir", trained, "--load-epoch", "3",
                                        env_extra={"LINEAR_PROBE_SIGNAL_IN_TEST": str(int(signal.SIGINT))})
    assert code == 130 and "Traceback" not in err
    line = EVAL_STOPPED.format(int(signal.SIGINT))
    assert printed.splitlines()[-1] == line == (out / "log.txt").read_text().splitlines()[-1]


# --- one run per output folder ---------------------------------------------------------------------

def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_finishes_intact(ran):
    result = ran["second_run_into_a_held_folder"].result()
    out, pid = result["out"], result["pid"]
    code, printed, err = result["second"]
    assert code == 75 and printed == ""
    assert_one_line(err, f"train.py: error: {out} is in use by process {pid} on ", "--seed 1",
                    "wait for it to finish, or choose another --output-dir")
    script = result["script"]  # FORCE=1: neither moved aside nor reused
    assert script.returncode == 75 and f"in use by process {pid}" in script.stderr
    assert result["unchanged"] and not list(out.parent.glob("shared.old-*"))
    code, _, err = result["first"]
    assert code == 0, err
    assert not list(out.glob("log.txt-*")) and "* accuracy:" in (out / "log.txt").read_text()


def test_a_lock_left_by_a_killed_run_does_not_block_the_rerun(ran, run_in_process):
    out = ran["sigkill_while_holding"].result()
    assert folder_in_use(out) is None  # at once: the orphaned workers do not hold it
    code, printed, err = run_in_process(out)
    assert code == 0, err
    assert "* accuracy:" in printed


# --- a filesystem that is full or read-only (a tmpfs mounted in a private namespace) ---------------

def test_a_full_disk_stops_with_one_line_and_never_a_traceback(ran):
    code, printed, err, out = ran["full_disk"].result()
    assert code == 1, err  # before: exit 120 after a chained traceback
    assert "Traceback" not in err and "Exception" not in err
    assert err.count("Warning: cannot write the log") == 1
    assert err.strip().splitlines()[-1].startswith(
        f"train.py: error: Could not write checkpoint {out}/linear/model.pth.tar-1 ([Errno 28] No space left")
    assert "epoch [1/3] batch [4/4]" in printed  # training went on after the log filled up


def test_a_read_only_output_folder_is_one_line(ran):
    code, printed, err, out = ran["read_only_folder"].result()
    assert code == 1 and printed == ""
    assert_one_line(err, f"Cannot write into the output folder {out} (Read-only file system): make it writable")
