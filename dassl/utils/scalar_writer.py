"""Tensorboard scalars that never stop a run: a write that fails (a full disk, a vanished folder) is said
once, then scalars are dropped; the log and the checkpoints are what a run needs.

Tensorboard writes from a background thread, which dies on the first failed write and prints a traceback
through ``threading.excepthook``; that thread's OSError is left to the next write from the run, which
re-raises it, so the user reads one warning instead.
"""
import contextlib
import threading


def _quiet_writer_thread_errors(args, previous=threading.excepthook):
    if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
        return
    previous(args)


class ScalarWriter:
    """``add_scalar`` and ``close`` of a SummaryWriter in ``log_dir``, guarded as the module says."""

    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter  # ImportError: the caller runs without scalars

        threading.excepthook = _quiet_writer_thread_errors
        self.log_dir = log_dir
        self._writer = None
        try:
            self._writer = SummaryWriter(log_dir=log_dir)
        except OSError as error:
            self._give_up(error)

    def add_scalar(self, tag, value, step=None):
        if self._writer is not None:
            self._guarded(self._writer.add_scalar, tag, value, step)

    def close(self):
        if self._writer is not None:
            self._guarded(self._writer.close)
            self._writer = None

    def _guarded(self, action, *args):
        try:
            action(*args)
        except OSError as error:
            self._give_up(error)

    def _give_up(self, error):
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()
        print(f"Warning: cannot write tensorboard scalars to {self.log_dir} ({error}); the run goes on without "
              "them")
