"""What a running sweep shows: one status line (counts by state, elapsed, ETA) rewritten in place on a
terminal, a line per event otherwise (logs, CI); and at the end what failed, with its command and the
tail of its log."""
import datetime
import os
import sys
import time

from .child import tail

# Run states of a job in a sweep, in the order the status line shows them.
DONE, RUNNING, WAITING, QUEUED, HELD, FAILED, BLOCKED, INTERRUPTED = (
    "finished", "running", "waiting", "queued", "held by another process", "failed",
    "not run (a dependency failed)", "interrupted")
ORDER = (DONE, RUNNING, QUEUED, WAITING, HELD, FAILED, BLOCKED, INTERRUPTED)
QUIET_STATUS_EVERY = 60   # seconds between status lines when not on a terminal


def count(states):
    """{state: number of jobs} of {job index: state}."""
    counts = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def clock(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    def __init__(self, total, stream=None, with_eta=False):
        self.total = total
        self.with_eta = with_eta      # an ETA, or "ETA unknown" when there is nothing to estimate it from
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_status = 0.0
        self._status_shown = False

    def status(self, counts, eta=None):
        parts = [f"{counts.get(DONE, 0)}/{self.total} finished"]
        parts += [f"{counts[state]} {state}" for state in ORDER[1:] if counts.get(state)]
        line = f"[{clock(time.monotonic() - self.started)}] " + ", ".join(parts)
        if eta is not None:
            return f"{line} | ETA {clock(eta)}"
        return line + (" | ETA unknown" if self.with_eta else "")

    def event(self, text, counts, eta=None):
        """A line that stays (a job started, finished, failed), then the status."""
        self._clear()
        print(f"{text}", file=self.stream)
        self.tick(counts, eta, force=True)

    def tick(self, counts, eta=None, force=False):
        now = time.monotonic()
        if self.tty:
            self._clear()
            self.stream.write(self.status(counts, eta))
            self._status_shown = True
        elif force or now - self._last_status >= QUIET_STATUS_EVERY:
            print("  " + self.status(counts, eta), file=self.stream)
        self._last_status = now
        self.stream.flush()

    def close(self):
        self._clear()

    def _clear(self):
        if self.tty and self._status_shown:
            self.stream.write("\r\033[K")
            self._status_shown = False


def summary(jobs, states, details, settings, stream=None):
    """Counts, then each failed job with its command and log tail, and the jobs not run and why."""
    stream = stream or sys.stdout
    counts = count(states)
    print("\n== Sweep: " + ", ".join(f"{counts[state]} {state}" for state in ORDER if state in counts),
          file=stream)
    for state, title in ((FAILED, "Failed"), (INTERRUPTED, "Interrupted (rerun the same command to resume)"),
                         (HELD, "Held by another process (rerun once it has finished)"),
                         (BLOCKED, "Not run: a job they need failed")):
        indices = [i for i, s in states.items() if s == state]
        if not indices:
            continue
        print(f"\n{title}:", file=stream)
        for index in indices:
            job = jobs[index]
            print(f"- {job.name}" + (f": {details[index]}" if details.get(index) else ""), file=stream)
            if state == FAILED:
                print(f"  command: {job.display(settings)}", file=stream)
                log_path = settings.log_file(job)
                print(f"  log: {log_path}" if os.path.isfile(log_path) else "  log: none (the job never ran)",
                      file=stream)
                for line in tail(log_path):
                    print(f"  | {line}", file=stream)
    return counts

