"""The Slurm launcher's ledger (<log dir>/slurm_jobs.json: {run folder: Slurm job id}) and the sweep lock.

Each submission is recorded the moment Slurm accepts it (an atomic replace of the file), so a sweep
that stops part-way (a failing sbatch, Ctrl-C) never loses the ids of jobs already queued, and the rerun
never submits them twice. The lock (a ``RunLock`` on the log dir) is held while a sweep looks at the
queue and submits: a second sweep on the same output folder waits for it, then finds its jobs queued.
"""
import json
import time
from contextlib import contextmanager

from dassl.utils.runlock import FolderInUse, RunLock
from tools.report import write_atomic

from .jobs import SweepError

LOCK_POLL_SECONDS = 1.0


class Ledger:
    def __init__(self, path):
        self.path = path

    def read(self):
        """{run folder: Slurm job id}; SweepError naming the file when it is not a ledger."""
        fix = "move it aside and check squeue before rerunning (jobs it listed may still be queued)"
        try:
            with open(self.path) as handle:
                ledger = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise SweepError(f"{self.path} cannot be read as the sweep's job ledger ({error}): {fix}") from None
        if not isinstance(ledger, dict) or not all(isinstance(key, str) and isinstance(value, str)
                                                   for key, value in ledger.items()):
            raise SweepError(f"{self.path} is not the sweep's job ledger (expected a JSON object "
                             f"{{run folder: Slurm job id}}, found {type(ledger).__name__}): {fix}")
        return ledger

    def record(self, ids):
        """Add {run folder: job id} to the file at once."""
        ledger = self.read()
        ledger.update(ids)
        write_atomic(self.path, json.dumps(ledger, indent=1))


@contextmanager
def sweep_lock(log_dir, say):
    """Hold the sweep lock of ``log_dir``; when another sweep holds it, ``say`` one line and wait."""
    lock = RunLock(log_dir, "tools.sweep submitting to Slurm")
    told = False
    while True:
        try:
            lock.acquire()
            break
        except FolderInUse as error:
            if not told:
                say(f"Waiting for another sweep to finish submitting: {error}")
                told = True
            time.sleep(LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        lock.release()
