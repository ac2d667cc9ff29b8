"""--launcher slurm: the jobs as Slurm job arrays through submitit, then followed until they end.

Jobs that need nothing go into one array; an evaluation waits for its training with ``afterok`` (and
``--kill-on-invalid-dep``, so a failed training cancels it instead of leaving it pending forever); jobs
that need the same jobs share an array. ``--array-parallelism`` caps the running tasks of each array.
Every submitted job is recorded in <log dir>/slurm_jobs.json, so the same command again follows the
jobs still in the queue instead of submitting them twice. Ctrl-C stops following; the jobs stay queued.
"""
import getpass
import json
import os.path as osp
import shlex
import subprocess
import time

import submitit

from tools.report import write_atomic

from . import child
from .jobs import FINISHED, HELD, QUEUED, REPO, TO_RUN, ask_script
from .progress import BLOCKED, DONE, FAILED, RUNNING, WAITING, Progress, count
from .progress import HELD as HELD_ELSEWHERE
from .progress import QUEUED as IN_QUEUE
from .slurm_job import RunFolderHeld, ScriptJob

# squeue states of a job that is not over (a requeued job is PENDING again, its reason BeginTime).
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
          "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def squeue():
    """{job id: (state, reason)} of this user's jobs that Slurm still lists, array tasks one by one."""
    result = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
                            capture_output=True, text=True, check=True)
    rows = (line.split("|", 2) for line in result.stdout.splitlines() if line.count("|") == 2)
    return {job_id: (state, reason) for job_id, state, reason in rows}


class SlurmQueue:
    def __init__(self, jobs, settings, options, stream=None):
        self.jobs, self.settings, self.options = jobs, settings, options
        self.ledger_path = osp.join(settings.log_dir, "slurm_jobs.json")
        self.slurm_folder = osp.join(settings.log_dir, "slurm", "%j")
        self.ids = {}              # job index -> Slurm job id ("123" or "123_4" for an array task)
        self.states, self.details = {}, {}
        self.stream = stream
        self.stop_signal = None

    # --- what is queued already ------------------------------------------------------------------
    def _ledger(self):
        try:
            with open(self.ledger_path) as handle:
                return json.load(handle)
        except FileNotFoundError:
            return {}

    def mark_queued(self):
        """Jobs an earlier sweep submitted that are still in the queue: QUEUED, with their ids."""
        ledger = self._ledger()
        if not ledger:
            return
        listed = squeue()
        for index, job in enumerate(self.jobs):
            job_id = ledger.get(job.run_dir)
            if job.state in TO_RUN and job_id and listed.get(job_id, ("",))[0] in ACTIVE:
                job.state = QUEUED
                self.ids[index] = job_id

    # --- submission ------------------------------------------------------------------------------
    def _executor(self):
        options = self.options
        executor = submitit.SlurmExecutor(folder=self.slurm_folder, max_num_timeout=options.max_requeues)
        optional = {"partition": options.partition, "account": options.account,
                    "gpus_per_node": options.gpus_per_job or None, "cpus_per_task": options.cpus_per_job,
                    "mem": f"{options.mem_gb}GB" if options.mem_gb else None}
        executor.update_parameters(
            job_name="mupl-sweep", time=options.time, array_parallelism=options.array_parallelism,
            signal_delay_s=options.signal_delay, stderr_to_stdout=True,
            setup=[f"export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}"],
            additional_parameters={"kill-on-invalid-dep": "yes", "requeue": True},
            **{key: value for key, value in optional.items() if value is not None})
        return executor

    def _call(self, job):
        return ScriptJob(job.command(self.settings.force), self.settings.env, self.settings.log_file(job),
                         job.display(self.settings), self.settings.stop_timeout)

    def submit(self):
        """Submit every job to run, in dependency order; a job that needs a run held by another
        process is left out (the next sweep submits it)."""
        executor = self._executor()
        remaining = [index for index, job in enumerate(self.jobs) if job.state in TO_RUN]
        ledger = self._ledger()
        while remaining:
            ready = [i for i in remaining if all(dep in self.ids for dep in self.jobs[i].deps)]
            if not ready:
                break
            groups = {}
            for index in ready:
                groups.setdefault(tuple(self.ids[dep] for dep in self.jobs[index].deps), []).append(index)
            for needs, members in groups.items():
                executor.update_parameters(dependency="afterok:" + ":".join(needs) if needs else None)
                with executor.batch():
                    submitted = [executor.submit(self._call(self.jobs[index])) for index in members]
                for index, slurm_job in zip(members, submitted):
                    self.ids[index] = slurm_job.job_id
                    ledger[self.jobs[index].run_dir] = slurm_job.job_id
            write_atomic(self.ledger_path, json.dumps(ledger, indent=1))
            remaining = [index for index in remaining if index not in self.ids]
        for index in remaining:
            self.states[index], self.details[index] = HELD_ELSEWHERE, "needs a run held by another process"
        return {self.jobs[index].name: job_id for index, job_id in self.ids.items()}

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
            state, reason = listed
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
        slurm_state = listed[0] if listed else "gone from the queue"
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
