"""One job's process, in a local slot or inside a Slurm allocation: started, read and stopped alike.

Light on imports on purpose: a Slurm job imports this module before its script starts.
"""
import contextlib
import os
import signal
import subprocess
import time
import types

EX_IN_USE = 75                           # train.py and the scripts: the run folder is held by a live process
INTERRUPTED = {130, 143, -signal.SIGINT, -signal.SIGTERM}   # stopped by a signal; a rerun resumes
TAIL_LINES = 15


def start(command, env, log_path, header, ignore_signals=()):
    """Run ``command`` in its own session (a Ctrl-C at the terminal reaches the sweep only, which stops
    its jobs itself), stdout and stderr appended to ``log_path`` under a header line."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n")
        log.flush()

        def ignore():
            for signum in ignore_signals:
                signal.signal(signum, signal.SIG_IGN)

        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=ignore if ignore_signals else None)


def terminate(process):
    """SIGTERM to the job's own process (train.py, which the script became: it stops after the current
    iteration with a checkpoint), never to its data-loader workers, which would die before that
    checkpoint is written."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)


def wait_or_kill(process, timeout):
    """The exit code once the process ends, after SIGKILL to its whole session past ``timeout`` seconds.
    Polls only (no blocking wait), so a signal handler may call it while the main loop polls too."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while process.poll() is None and time.monotonic() < deadline + 10:
            time.sleep(0.1)
    return process.returncode


def stop(process, timeout):
    terminate(process)
    return wait_or_kill(process, timeout)


def tail(log_path, lines=TAIL_LINES):
    """The last lines of a job's log (its latest attempt is at the end)."""
    try:
        with open(log_path, errors="replace") as log:
            return log.read().splitlines()[-lines:]
    except OSError:
        return []


@contextlib.contextmanager
def stop_signals():
    """Within the block, SIGINT (Ctrl-C) and SIGTERM only set ``caught.signum``: the sweep stops (or stops
    following) in order instead of dying with its jobs half-told."""
    caught = types.SimpleNamespace(signum=None)

    def handler(signum, frame):
        caught.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
