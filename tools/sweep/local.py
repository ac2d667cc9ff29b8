"""--launcher local: a work queue over GPU or CPU slots on this machine.

A job starts as soon as a slot is free and the jobs it needs have finished (no waves); a failing job
only stops the jobs that need it; Ctrl-C or SIGTERM stops the running jobs with a checkpoint, and the
same command later continues where it stopped. A run folder held by another live process is left
alone and watched: once free, its job counts as finished (the other process finished it) or is started.
"""
import time

from dassl.utils.runlock import folder_in_use

from . import child
from .jobs import FINISHED, HELD, TO_RUN, ask_script
from .progress import BLOCKED, DONE, FAILED, INTERRUPTED, RUNNING, WAITING, Progress, clock, count
from .progress import HELD as HELD_ELSEWHERE

POLL_SECONDS = 0.2
HELD_RECHECK_SECONDS = 2.0


def slots_for(gpus=(), slots=1, gpus_per_job=1):
    """(label, environment) of each slot: ``gpus`` in groups of ``gpus_per_job`` (NGPU, torchrun's
    processes), each group a job's CUDA_VISIBLE_DEVICES; else ``slots`` slots that keep the environment."""
    if not gpus:
        return [(f"slot {n + 1}", {}) for n in range(slots)]
    groups = [",".join(gpus[n:n + gpus_per_job]) for n in range(0, len(gpus), gpus_per_job)]
    return [(f"GPU {group}", {"CUDA_VISIBLE_DEVICES": group}) for group in groups]


class LocalQueue:
    def __init__(self, jobs, settings, slots, estimator=None, stream=None):
        self.jobs, self.settings, self.slots, self.estimator = jobs, settings, slots, estimator
        self.states, self.details = {}, {}
        for index, job in enumerate(jobs):
            if job.state == FINISHED:
                self.states[index] = DONE
            elif job.state == HELD:
                self.states[index], self.details[index] = HELD_ELSEWHERE, job.holder
            else:
                assert job.state in TO_RUN, job.state
                self.states[index] = WAITING
        self.running = {}          # slot -> (job index, process, start time)
        self.durations = {}        # job index -> seconds, for the jobs this sweep ran
        self.stop_signal = None
        self.progress = Progress(len(jobs), stream, with_eta=True)
        self._held_checked = 0.0

    def run(self):
        """Run every job that can run; returns {job index: state}. ``stop_signal`` says if it was stopped."""
        try:
            with child.stop_signals() as caught:
                while caught.signum is None and self._unsettled():
                    self._reap()
                    self._recheck_held()
                    self._block_dependents()
                    self._fill_slots()
                    self.progress.tick(count(self.states), self.eta())
                    time.sleep(POLL_SECONDS)
                self.stop_signal = caught.signum
                if self.stop_signal is not None:
                    self._stop_all()
        finally:
            self.progress.close()
        return self.states

    def _unsettled(self):
        return any(state in (WAITING, RUNNING, HELD_ELSEWHERE) for state in self.states.values())

    def _event(self, text):
        self.progress.event(text, count(self.states), self.eta())

    def _ready(self):
        for index, state in self.states.items():
            if state == WAITING and all(self.states[dep] == DONE for dep in self.jobs[index].deps):
                yield index

    def _fill_slots(self):
        free = [slot for slot in range(len(self.slots)) if slot not in self.running]
        for index in list(self._ready()):
            if not free:
                return
            job = self.jobs[index]
            holder = folder_in_use(job.run_dir)
            if holder:
                self.states[index], self.details[index] = HELD_ELSEWHERE, holder
                self._event(f"held     {job.name}: {holder}")
                continue
            slot = free.pop(0)
            label, slot_env = self.slots[slot]
            process = child.start(job.command(self.settings.force), self.settings.process_env(**slot_env),
                                  self.settings.log_file(job), f"{label}: {job.display(self.settings)}")
            self.running[slot] = (index, process, time.monotonic())
            self.states[index] = RUNNING
            self._event(f"started  {job.name} ({label})")

    def _reap(self):
        for slot, (index, process, started) in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            del self.running[slot]
            job, seconds = self.jobs[index], time.monotonic() - started
            if code == 0:
                self.states[index] = DONE
                self.durations[index] = seconds
                self._event(f"finished {job.name} ({clock(seconds)})")
            elif code == child.EX_IN_USE:   # another process took the folder first: a race, not a failure
                holder = folder_in_use(job.run_dir) or "another process"
                self.states[index], self.details[index] = HELD_ELSEWHERE, holder
                self._event(f"held     {job.name}: {holder}")
            else:
                self.states[index], self.details[index] = FAILED, f"exit code {code}"
                self._event(f"FAILED   {job.name} (exit code {code}; log: {self.settings.log_file(job)})")

    def _recheck_held(self):
        """A held folder that is free again: finished by its holder, or ours to run (it resumes)."""
        if time.monotonic() - self._held_checked < HELD_RECHECK_SECONDS:
            return
        self._held_checked = time.monotonic()
        for index, state in self.states.items():
            job = self.jobs[index]
            if state != HELD_ELSEWHERE or folder_in_use(job.run_dir):
                continue
            ask_script(job, self.settings)
            self.states[index] = DONE if job.state == FINISHED else WAITING
            self.details.pop(index, None)
            self._event(f"released {job.name} ({'finished' if job.state == FINISHED else 'to run'})")

    def _block_dependents(self):
        changed = True
        while changed:
            changed = False
            for index, state in self.states.items():
                if state == WAITING and any(self.states[dep] in (FAILED, BLOCKED) for dep in self.jobs[index].deps):
                    self.states[index] = BLOCKED
                    changed = True

    def _stop_all(self):
        """Every running job gets SIGTERM at once, then each its time to write a checkpoint."""
        self._event(f"stopping {len(self.running)} running jobs (signal {self.stop_signal})")
        for _, process, _ in self.running.values():
            child.terminate(process)
        for slot, (index, process, _) in list(self.running.items()):
            code = child.wait_or_kill(process, self.settings.stop_timeout)
            self.states[index] = DONE if code == 0 else INTERRUPTED
            if code != 0:
                self.details[index] = f"exit code {code}"
            del self.running[slot]

    def eta(self):
        """Seconds until the queue is empty: the estimates of what is left, scaled by how the jobs this
        sweep finished compared with their own estimates, over the slots; None when a job left has no
        estimate (a dataset of unknown size): an ETA without it would be a guess."""
        if self.estimator is None:
            return None
        estimates = {index: self.estimator.seconds(self.jobs[index])[0] for index, state in self.states.items()
                     if state in (WAITING, RUNNING) or index in self.durations}
        done = [(self.durations[i], estimates[i]) for i in self.durations if estimates.get(i)]
        scale = sum(d for d, _ in done) / sum(e for _, e in done) if done else 1.0
        left = 0.0
        running = {index: started for index, _, started in self.running.values()}
        for index, estimate in estimates.items():
            if index in self.durations:
                continue
            if estimate is None:
                return None
            spent = time.monotonic() - running[index] if index in running else 0.0
            left += max(estimate * scale - spent, 0.0)
        return left / len(self.slots)
