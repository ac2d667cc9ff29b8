"""The run-folder lock: held while a process lives, free once it is gone, and named in the refusal."""
import os
import subprocess
import sys

import pytest

from dassl.utils.runlock import FolderInUse, RunLock, folder_in_use

HOLD = "import sys, time; from dassl.utils.runlock import RunLock; RunLock(sys.argv[1], 'holder').acquire(); print('held', flush=True); time.sleep(60)"


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=f"in use by process {holder.pid} on .*holder"):
            RunLock(tmp_path).acquire()
        assert str(holder.pid) in folder_in_use(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead process's lock: the folder is free again, no clean-up needed
    assert folder_in_use(tmp_path) is None
    with RunLock(tmp_path, "rerun"):
        assert folder_in_use(tmp_path) is not None
    assert folder_in_use(tmp_path) is None


def test_a_folder_without_lock_file_is_free(tmp_path):
    assert folder_in_use(tmp_path) is None
    assert folder_in_use(tmp_path / "absent") is None
