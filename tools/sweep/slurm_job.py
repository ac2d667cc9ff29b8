"""What runs inside each Slurm job of a sweep (submitit pickles it; light imports on purpose).

Near its time limit, or when preempted with a warning, Slurm sends the job submitit's signal (USR2 by
default); submitit then calls ``checkpoint``, which stops train.py cleanly (SIGTERM: it writes its
checkpoint after the current iteration) and hands back the same call, so submitit requeues the job and
the script resumes the run from that checkpoint. The script's process ignores that signal itself.
A real failure raises: submitit records it and nothing requeues it (timeouts are requeued at most
``max_num_timeout`` times). A run that turns out finished when the signal comes (it ended just before,
or was stopped after its results were written) ends the job as a success, whatever requeues are left:
a finished run is never failed, and the jobs that need it run.
"""
import os
import signal
import subprocess
import time

import submitit

from . import child

STOP_SIGNAL = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)   # submitit's --signal (USR2)


class RunFolderHeld(RuntimeError):
    """Exit code 75: another live process holds the run folder (a race with another sweep or script)."""


class JobFailed(RuntimeError):
    """The script failed for a real error; its log says why."""


class ScriptJob(submitit.helpers.Checkpointable):
    def __init__(self, command, env, log_path, header, stop_timeout):
        self.command, self.env, self.log_path = command, env, log_path
        self.header, self.stop_timeout = header, stop_timeout
        self._process = None

    def __call__(self):
        self._process = child.start(self.command, {**os.environ, **self.env}, self.log_path,
                                    f"Slurm job {os.environ.get('SLURM_JOB_ID', '?')}: {self.header}",
                                    ignore_signals=(STOP_SIGNAL,))
        while self._process.poll() is None:     # polls, so that checkpoint() may poll from a signal handler
            time.sleep(0.5)
        code = self._process.returncode
        if code == 0:
            return "finished"
        if code == child.EX_IN_USE:
            raise RunFolderHeld(f"the run folder is held by another process; see {self.log_path}")
        if code in child.INTERRUPTED:
            raise JobFailed(f"interrupted by a signal (exit code {code}): Slurm stopped the job; a rerun "
                            f"resumes it. Log: {self.log_path}")
        raise JobFailed(f"exit code {code}; log: {self.log_path}")

    def checkpoint(self, *args, **kwargs):
        if self._process is not None:
            code = child.stop(self._process, self.stop_timeout)
            if code == 0 or self._run_finished():
                self._succeed()
        return super().checkpoint(*args, **kwargs)

    def _run_finished(self):
        """What the script itself says of its run (SWEEP_PLAN=1, as the sweep asks it)."""
        plan = subprocess.run(self.command, env={**os.environ, **self.env, "SWEEP_PLAN": "1"},
                              capture_output=True, text=True)
        return plan.returncode == 0 and "state\tfinished" in plan.stdout.splitlines()

    def _succeed(self):
        """End the job now as submitit ends a successful one (its result file, exit code 0), from within
        submitit's signal handler, which would otherwise requeue it or fail it as timed out."""
        with open(self.log_path, "a") as log:
            log.write("=== the run is finished: the signal that came after it ends the job as a success\n")
        result = submitit.JobEnvironment().paths.result_pickle
        submitit.core.utils.cloudpickle_dump(("success", "finished"), result)
        raise SystemExit(0)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_process"] = None      # a running process is not part of the requeued call
        return state

