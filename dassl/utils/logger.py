"""Tee everything printed into OUTPUT_DIR/log.txt, which parse_test_res.py and the report read."""
import contextlib
import os
import os.path as osp
import sys
import time


class Logger:
    """Writes to the console and a log file; an existing log is never overwritten.

    A log that cannot be written (disk full, quota, a vanished folder) is said once on stderr and then
    left alone: the run goes on on the console, and never dies of a failed log write or exit flush.
    """

    def __init__(self, fpath, console=None):
        self.console = console if console is not None else sys.stdout
        os.makedirs(osp.dirname(osp.abspath(fpath)), exist_ok=True)
        self.path = fpath
        self.file = open(fpath, "w")

    def write(self, msg):
        self.console.write(msg)
        self._to_file(self.file.write, msg)

    def write_to_file(self, line):
        """A line for the log only (the console has it already, e.g. on stderr)."""
        self._to_file(self.file.write, line + "\n")
        self._to_file(self._sync_file)

    def flush(self):
        self.console.flush()
        self._to_file(self._sync_file)

    def isatty(self):
        return False

    def close(self):
        self._to_file(self.file.close)
        if sys.stdout is self:
            sys.stdout = self.console

    def _sync_file(self):
        self.file.flush()
        os.fsync(self.file.fileno())

    def _to_file(self, action, *args):
        if self.file.closed:
            return
        try:
            action(*args)
        except OSError as error:
            with contextlib.suppress(OSError):
                self.file.close()  # drops what is still buffered: nothing is retried at exit
            print(f"Warning: cannot write the log {self.path} ({error}); the run goes on, printing to the "
                  "console only", file=sys.stderr)


def _free_log_path(output):
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if not osp.exists(fpath):
        return fpath
    stamped = fpath + time.strftime("-%Y-%m-%d-%H-%M-%S")
    candidate, suffix = stamped, 1
    while osp.exists(candidate):
        candidate, suffix = f"{stamped}-{suffix}", suffix + 1
    return candidate


def setup_logger(output=None):
    """Tee stdout into ``output/log.txt``; when that exists, into ``log.txt-<time>`` (as Dassl)."""
    if output is None:
        return None
    console = sys.stdout.console if isinstance(sys.stdout, Logger) else sys.stdout
    if isinstance(sys.stdout, Logger):
        sys.stdout.close()
    logger = Logger(_free_log_path(output), console=console)
    sys.stdout = logger
    return logger
