"""One writer per run folder: an advisory ``flock`` held for as long as a run writes into the folder.

The kernel drops the lock when its process ends, however it ends, so a lock left by a killed or crashed
run never blocks the rerun; the lock file only records who holds it, for the message.

``python dassl/utils/runlock.py FOLDER`` (what scripts/lib.sh runs) exits 75 (EX_TEMPFAIL, as train.py)
with the holder on stderr when a live process holds FOLDER, else 0; it imports nothing of the project.
"""
import fcntl
import json
import os
import os.path as osp
import socket
import sys
import time

LOCK_FILE = ".run.lock"
IN_USE_EXIT_CODE = 75


class FolderInUse(RuntimeError):
    """Another live process writes into this run folder."""


def _describe(holder, folder):
    if not holder:
        return f"{folder} is in use by another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return (f"{folder} is in use by process {holder.get('pid')} on {holder.get('host')} "
            f"(since {since}: {holder.get('command', '?')})")


def read_holder(folder):
    """What the lock file says about its last holder (a dict), or None."""
    try:
        with open(osp.join(folder, LOCK_FILE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


_HELD = set()  # the locks this process holds


def _drop_held_locks_in_child():
    """A flock belongs to the open file, which a forked child (a DataLoader worker) shares: the child drops
    its copy, so the folder is free as soon as the holder is gone, not when its last worker notices."""
    for lock in list(_HELD):
        os.close(lock._fd)
        lock._fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_held_locks_in_child)


class RunLock:
    """``with RunLock(folder):`` or ``acquire()``/``release()``; raises FolderInUse when held elsewhere."""

    def __init__(self, folder, command=""):
        self.folder = folder
        self.command = command
        self._fd = None

    def acquire(self):
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(osp.join(self.folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(_describe(read_holder(self.folder), self.folder)) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": self.command}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError:
            os.close(fd)  # a full disk: the caller reports it, and the folder is not left held
            raise
        self._fd = fd
        _HELD.add(self)
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
            _HELD.discard(self)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def folder_in_use(folder):
    """The message naming the live holder of ``folder``, or None when nobody holds it."""
    path = osp.join(folder, LOCK_FILE)
    if not osp.isfile(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe(read_holder(folder), folder)
    finally:
        os.close(fd)
    return None


if __name__ == "__main__":  # `python dassl/utils/runlock.py FOLDER` (no torch import): who holds it, 75 if held
    message = folder_in_use(sys.argv[1])
    print(message or f"{sys.argv[1]} is not in use")
    sys.exit(IN_USE_EXIT_CODE if message else 0)
