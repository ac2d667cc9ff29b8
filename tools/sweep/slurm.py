"""--launcher slurm: the jobs as Slurm job arrays through submitit, then followed until they end.

Jobs that need nothing go into one array; an evaluation waits for its training with ``afterok`` (and
``--kill-on-invalid-dep``, so a failed training cancels it instead of leaving it pending forever); jobs
that need the same jobs share an array. ``--array-parallelism`` caps the running tasks of each array.
Every submitted job is recorded in <log dir>/slurm_jobs.json as Slurm accepts it (ledger.py), so the
same command again follows the jobs still in the queue instead of submitting them twice. Ctrl-C stops
following; the jobs stay queued.
"""
import contextlib
import getpass
import glob
import io
import os
import os.path as osp
import subprocess
import time

import submitit

from dassl.utils.runlock import read_holder

from . import child
from .jobs import FINISHED, HELD, QUEUED, TO_RUN, SweepError, ask_script
from .ledger import Ledger
from .progress import BLOCKED, DONE, FAILED, RUNNING, WAITING, Progress, count
from .progress import HELD as HELD_ELSEWHERE
from .progress import QUEUED as IN_QUEUE
from .slurm_job import RunFolderHeld, ScriptJob
from .slurm_options import array_name, executor_parameters, time_limit

# squeue states of a job that is not over (a requeued job is PENDING again, its reason BeginTime).
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
          "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def squeue():
    """{job id: (state, reason, nodes)} of this user's jobs that Slurm still lists, array tasks one by one."""
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r|%N"],
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SweepError(f"squeue, which tells what is queued, fails: {getattr(error, 'stderr', '') or error}"
                         .strip()) from None
    rows = (line.split("|", 3) for line in result.stdout.splitlines() if line.count("|") == 3)
    return {job_id: (state, reason, nodes) for job_id, state, reason, nodes in rows}


def hostnames(nodes):
    """The short host names of a Slurm node list (node[01-03],gpu7)."""
    if "[" in nodes:
        nodes = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               check=True).stdout.replace("\n", ",")
    return {node.split(".")[0] for node in nodes.split(",") if node}


def held_by_own_job(job, listed):
    """Whether the process that holds a job's run folder runs in the Slurm job the ledger names for it
    (that job is running, on the holder's host): the sweep's own job, to follow, not another's."""
    holder = read_holder(job.run_dir) or {}
    host = str(holder.get("host", "")).split(".")[0]
    return bool(listed) and listed[0] == "RUNNING" and host in hostnames(listed[2])


class SlurmQueue:
    def __init__(self, jobs, settings, options, estimator=None, stream=None):
        self.jobs, self.settings, self.options, self.estimator = jobs, settings, options, estimator
        self.ledger = Ledger(osp.join(settings.log_dir, "slurm_jobs.json"))
        self.ledger_path = self.ledger.path
        self.slurm_folder = osp.join(settings.log_dir, "slurm", "%j")
        self.ids = {}              # job index -> Slurm job id ("123" or "123_4" for an array task)
        self.states, self.details = {}, {}
        self.stream = stream
        self.stop_signal = None

    # --- what is queued already ------------------------------------------------------------------
    def mark_queued(self):
        """Jobs an earlier sweep submitted that are still in the queue: QUEUED, with their ids; a job of
        ours that is running holds its run folder, and is QUEUED too, not HELD."""
        ledger = self.ledger.read()
        if not ledger:
            return
        listed = squeue()
        for index, job in enumerate(self.jobs):
            job_id = ledger.get(job.run_dir)
            row = listed.get(job_id)
            if not row or row[0] not in ACTIVE:
                continue
            if job.state in TO_RUN or (job.state == HELD and held_by_own_job(job, row)):
                job.state, job.holder = QUEUED, ""
                self.ids[index] = job_id

    # --- submission ------------------------------------------------------------------------------
    def arrays(self):
        """([(dependency indices, minutes, job indices)], left out): the submissions, in dependency order.
        Jobs that need the same jobs and get the same time limit share an array (with --max-running,
        each job is a submission of its own, for its chain); a job that needs a run held by another
        process is left out (the next sweep submits it)."""
        placed = set(self.ids)
        remaining = [index for index, job in enumerate(self.jobs) if job.state in TO_RUN and index not in placed]
        arrays = []
        while remaining:
            ready = [index for index in remaining if all(dep in placed for dep in self.jobs[index].deps)]
            if not ready:
                break
            groups = {}
            for index in ready:
                job = self.jobs[index]
                key = (tuple(job.deps), time_limit(job, self.estimator, self.options))
                groups.setdefault(key + ((index,) if self.options.max_running else ()), []).append(index)
            arrays += [(key[0], key[1], members) for key, members in groups.items()]
            placed.update(ready)
            remaining = [index for index in remaining if index not in placed]
        return arrays, remaining

    def _call(self, job):
        return ScriptJob(job.command(self.settings.force), self.settings.env, self.settings.log_file(job),
                         job.display(self.settings), self.settings.stop_timeout)

    def submit(self):
        """Submit every job to run, each array recorded in the ledger as soon as Slurm accepts it; returns
        {run name: job id} of the jobs this call submitted. SweepError when an sbatch fails.
        --max-running N: the jobs go into N chains, each job also waiting (afterany) for the one before
        it in its chain, so that at most N of them run at once."""
        executor = submitit.SlurmExecutor(folder=self.slurm_folder, max_num_timeout=self.options.max_requeues)
        arrays, left_out = self.arrays()
        submitted = {}
        chains = [None] * (self.options.max_running or 0)
        for number, (deps, minutes, members) in enumerate(arrays):
            needs = ["afterok:" + ":".join(self.ids[dep] for dep in deps)] if deps else []
            if chains and chains[number % len(chains)]:
                needs.append(f"afterany:{chains[number % len(chains)]}")
            executor.update_parameters(dependency=",".join(needs) or None,
                                       **executor_parameters(self.options, array_name([self.jobs[i] for i in members]),
                                                             minutes))
            try:   # submitit prints a failing sbatch's stderr too: the error below says it once
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                    handles = [executor.submit(self._call(self.jobs[index])) for index in members]
            except (submitit.core.utils.FailedJobError, OSError) as error:
                self._remove_unsubmitted()
                reason = str(error).strip().splitlines()[-1]
                raise SweepError(f"sbatch failed ({reason}); the {len(submitted)} jobs submitted before it are "
                                 f"recorded in {self.ledger.path}: rerun the same command to submit the rest") from None
            ids = {}
            for index, handle in zip(members, handles):
                self.ids[index] = submitted[self.jobs[index].name] = ids[self.jobs[index].run_dir] = handle.job_id
            self.ledger.record(ids)
            if chains:
                chains[number % len(chains)] = handles[0].job_id
        for index in left_out:
            self.states[index], self.details[index] = HELD_ELSEWHERE, "needs a run held by another process"
        return submitted

    def _remove_unsubmitted(self):
        """The pickled calls and submission file submitit left for an array that sbatch refused (under the
        sweep lock no other sweep submits from this folder)."""
        folder = osp.dirname(self.slurm_folder)
        for path in glob.glob(osp.join(folder, "*.pkl")) + glob.glob(osp.join(folder, ".submission_file_*")):
            if not osp.islink(path):     # a link: the submission file of an accepted job, moved to its folder
                os.remove(path)

    # --- following -------------------------------------------------------------------------------
    def follow(self):
        """Watch the queue until every job is over; returns {job index: state}."""
        for index, job in enumerate(self.jobs):
            if job.state == FINISHED:
                self.states[index] = DONE
            elif job.state == HELD:
                self.states[index], self.details[index] = HELD_ELSEWHERE, job.holder
        progress = Progress(len(self.jobs), self.stream)
        try:
            with child.stop_signals() as caught:
                while caught.signum is None:
                    listed = squeue()
                    for index, job_id in self.ids.items():
                        if self.states.get(index) in (None, IN_QUEUE, WAITING, RUNNING):
                            self._update(index, listed.get(job_id), progress)
                    progress.tick(count(self.states))
                    if not any(state in (IN_QUEUE, WAITING, RUNNING) for state in self.states.values()):
                        break
                    time.sleep(self.options.poll)
                self.stop_signal = caught.signum
        finally:
            progress.close()
        return self.states

    def _update(self, index, listed, progress):
        job, job_id = self.jobs[index], self.ids[index]
        before = self.states.get(index)
        if listed and listed[0] in ACTIVE:
            state, reason, _ = listed
            self.states[index] = RUNNING if state == "RUNNING" else WAITING if reason == "Dependency" else IN_QUEUE
            if self.states[index] == RUNNING and before != RUNNING:
                progress.event(f"running  {job.name} (Slurm job {job_id})", count(self.states))
            return
        ask_script(job, self.settings)
        if job.state == FINISHED:
            self.states[index] = DONE
            progress.event(f"finished {job.name} (Slurm job {job_id})", count(self.states))
            return
        error = self._error(job_id)
        slurm_state = listed[0] + (f" ({listed[1]})" if listed[1] not in ("", "None") else "") if listed else \
            "gone from the queue"
        if RunFolderHeld.__name__ in error:
            self.states[index], self.details[index] = HELD_ELSEWHERE, "held by another process"
        elif any(self.states.get(dep) in (FAILED, BLOCKED) for dep in job.deps):
            self.states[index] = BLOCKED
        else:
            self.states[index] = FAILED
            self.details[index] = f"Slurm job {job_id} {slurm_state}" + (f": {error}" if error else "")
        progress.event(f"{self.states[index]:8} {job.name} (Slurm job {job_id}, {slurm_state})", count(self.states))

    def _error(self, job_id):
        """The last line of the error submitit recorded for a job, or ''."""
        result = submitit.SlurmJob(folder=self.slurm_folder, job_id=job_id).paths.result_pickle
        if not result.exists():
            return ""
        outcome, value = submitit.core.utils.pickle_load(result)
        return str(value).strip().splitlines()[-1] if outcome == "error" else ""
