"""Tee everything printed into OUTPUT_DIR/log.txt, which parse_test_res.py and the report read."""
import os
import os.path as osp
import sys
import time


class Logger:
    """Writes to the console and a log file; an existing log is never overwritten."""

    def __init__(self, fpath, console=None):
        self.console = console if console is not None else sys.stdout
        os.makedirs(osp.dirname(osp.abspath(fpath)), exist_ok=True)
        self.path = fpath
        self.file = open(fpath, "w")

    def write(self, msg):
        self.console.write(msg)
        self.file.write(msg)

    def flush(self):
        self.console.flush()
        self.file.flush()
        os.fsync(self.file.fileno())

    def isatty(self):
        return False

    def close(self):
        if not self.file.closed:
            self.file.close()
        if sys.stdout is self:
            sys.stdout = self.console


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
