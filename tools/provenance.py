"""What made a run: ``run.json`` beside ``log.txt``, and the check that a finished run was made by what a new
call would run.

train.py (rank 0) writes run.json when a run starts (the code, the command, the request and the merged
config, the environment) and completes it once the model and data are built (SHA-256 of the CLIP
weights, of the split file and of the few-shot list used) and at the end (phase times, final metrics).
The scripts and tools.sweep call ``check`` before they skip a finished run: a run whose config keys,
weights, split, few-shot list, trained model or code differ from the new call's is **stale**. A run
without run.json (made before it existed) is "unknown": reported as such, never refused.

    python -m tools.provenance check RUN_DIR [--allow-code-change] -- TRAIN_PY_ARGS...
        prints "same", "unknown", or "stale<TAB>key, key, ..." (exit 0; 2 on bad input)

The check imports neither torch nor the trainers (a sweep asks it once per finished run).
"""
import argparse
import datetime
import hashlib
import json
import os
import os.path as osp
import platform
import shlex
import subprocess
import sys
import time
import uuid

import yaml

from parse_test_res import read_result, read_run_result
from train_args import build_parser, flatten, request

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

RUN_JSON = "run.json"
FORMAT = 1
# Where a run is, not what it is: never a reason to call a run stale or a report cell mixed.
PLACE_KEYS = ("OUTPUT_DIR", "RESUME", "DATASET.ROOT")
SAME, UNKNOWN, STALE = "same", "unknown", "stale"


def now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def git(*args):
    return subprocess.run(["git", "-C", REPO, *args], capture_output=True, check=True).stdout


# The files that make a run: everything tracked but the documentation and the tests.
CODE_PATHS = ("--", ".", ":(exclude)docs", ":(exclude)tests", ":(exclude)*.md")


def code_version():
    """The git commit, whether tracked code files differ from it and the SHA-256 of that diff; without git
    (an unpacked copy), the SHA-256 of the project's Python sources."""
    try:
        commit = git("rev-parse", "HEAD").decode().strip()
        diff = git("diff", "HEAD", "--binary", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "source_sha256": source_digest()}
    return {"git_commit": commit, "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None}


def same_code(old, new):
    """Whether two code versions run the same code: the same uncommitted changes, on commits whose code
    files are equal (a commit of documentation or tests alone changes nothing a run computes)."""
    if old.get("diff_sha256") != new.get("diff_sha256") or old.get("source_sha256") != new.get("source_sha256"):
        return False
    if old.get("git_commit") == new.get("git_commit"):
        return True
    if not (old.get("git_commit") and new.get("git_commit")):
        return False
    try:
        git("diff", "--quiet", old["git_commit"], new["git_commit"], *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):   # code differs (exit 1), or a commit git does not know
        return False
    return True


def source_digest():
    digest = hashlib.sha256()
    for folder in ("clip", "dassl", "datasets", "trainers", "tools"):
        for base, dirs, files in sorted(os.walk(osp.join(REPO, folder))):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                path = osp.join(base, name)
                digest.update(osp.relpath(path, REPO).encode())
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    for name in ("train.py", "train_args.py", "plugins.py"):
        with open(osp.join(REPO, name), "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def code_label(code):
    """A short name of the code version: the commit's first 10 digits (+dirty-<diff hash>), or src-<hash>."""
    if not code:
        return "unknown"
    if code.get("git_commit"):
        return code["git_commit"][:10] + (f"+dirty-{code['diff_sha256'][:8]}" if code.get("dirty") else "")
    return f"src-{code['source_sha256'][:10]}"


def fingerprint(path, previous=None):
    """{path, size, mtime_ns, sha256} of a file, or None when it is not there. The hash of ``previous``
    (a fingerprint of the same path) is reused when size and modification time are unchanged, as make
    and rsync do: hashing CLIP's weights for every finished run of a sweep would take minutes."""
    if not path or not osp.isfile(path):
        return None
    stat = os.stat(path)
    found = {"path": osp.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if previous and all(previous.get(k) == found[k] for k in ("path", "size", "mtime_ns")):
        return {**found, "sha256": previous["sha256"]}
    return {**found, "sha256": file_sha256(path)}


def file_sha256(path):
    """SHA-256 of a file, read in 1 MiB blocks (clip.download has one too, but its package imports torch)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file(name, cache_dir=""):
    """The file CLIP weights are read from (``clip.clip.local_weights_file``); None when there is none."""
    from clip.clip import local_weights_file

    return local_weights_file(name, cache_dir or None)


def dataset_files(dataset, num_shots, seed):
    """(split file, few-shot list file) a built dataset read: its split_zhou_*.json (ImageNet's
    classnames.txt), and the cached few-shot draw it used (None when it has none)."""
    folder = getattr(dataset, "dataset_dir", "")
    names = [getattr(type(dataset), "split_file", ""), "classnames.txt"]
    split = next((osp.join(folder, n) for n in names if n and osp.isfile(osp.join(folder, n))), None)
    fewshot = None
    if num_shots >= 1 and hasattr(dataset, "fewshot_cache_path"):
        fewshot = dataset.fewshot_cache_path(num_shots, seed)
    return split, fewshot


def relative_file(path, root):
    """The fingerprint of a dataset file, with its path relative to DATASET.ROOT (a moved data folder
    is the same data)."""
    found = fingerprint(path)
    if found:
        found["relpath"] = osp.relpath(found["path"], osp.abspath(root)) if root else found["path"]
    return found


def environment(use_cuda):
    """Versions and the device this process computes on (USE_CUDA and a GPU: the current one)."""
    import torch
    import torchvision

    cuda = use_cuda and torch.cuda.is_available()
    device = torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else \
        f"cpu ({platform.processor() or platform.machine()})"
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "device": device, "host": platform.node()}


def read_record(folder):
    """run.json of a run folder as a dict, or None when there is none (or it is unreadable)."""
    path = osp.join(folder, RUN_JSON)
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def backbone_of(record):
    return (record.get("request") or {}).get("MODEL.BACKBONE.NAME") or record.get("backbone")


def config_digest(record):
    """SHA-256 of a run's merged config without its seed and its places: equal for every seed of one cell."""
    config = {k: v for k, v in flat_config(record).items() if k not in PLACE_KEYS + ("SEED",)}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def flat_config(record):
    return flatten(record.get("config") or {})


class RunRecord:
    """run.json of the run in ``cfg.OUTPUT_DIR``; ``write`` False (ranks other than 0) records nothing."""

    def __init__(self, cfg, args, write=True):
        self.folder, self.write_enabled = cfg.OUTPUT_DIR, write
        self.record = {}
        if not write:
            return
        earlier = read_record(self.folder) or {}
        self.record = {
            "format": FORMAT, "run_id": earlier.get("run_id") or uuid.uuid4().hex,
            "status": "running", "command": shlex.join([sys.executable, *sys.argv]),
            "code": code_version(), "backbone": cfg.MODEL.BACKBONE.NAME, "request": request(args),
            "config": json.loads(json.dumps(cfg, default=str)), "environment": environment(cfg.USE_CUDA),
            "started": earlier.get("started") or now(), "attempts": earlier.get("attempts", 0) + 1,
            "phases": {}, "weights": None, "split": None, "fewshot": None, "model": None, "metrics": None,
        }
        if args.eval_only and args.model_dir:
            trained = read_record(args.model_dir) or {}
            self.record["model"] = {"dir": osp.abspath(args.model_dir), "epoch": args.load_epoch,
                                    "run_id": trained.get("run_id")}
        self.write()

    def write(self):
        """Replace run.json in one step. Like the log, a record that cannot be written (a full disk) is
        said once on stderr and the run goes on: without it the run reads as "provenance unknown", which
        is kept and never refused, and the earlier run.json (if any) is left whole."""
        if not self.write_enabled:
            return
        from dassl.utils import atomic_write   # torch: train.py has it already; the check never writes

        path = osp.join(self.folder, RUN_JSON)
        try:
            with atomic_write(path, mode="w") as handle:
                json.dump(self.record, handle, indent=2, sort_keys=False, default=str)
                handle.write("\n")
        except OSError as error:
            print(f"Warning: cannot write {path} ({error.strerror or error}); the run goes on without it",
                  file=sys.stderr)
            self.write_enabled = False

    def built(self, trainer, cfg):
        """Record the weights, the split and the few-shot list the built trainer uses."""
        if not self.write_enabled:
            return
        self.record["weights"] = {"name": cfg.MODEL.BACKBONE.NAME,
                                  **(fingerprint(weights_file(cfg.MODEL.BACKBONE.NAME,
                                                             cfg.MODEL.BACKBONE.get("CACHE_DIR", ""))) or {})}
        dataset = getattr(getattr(trainer, "dm", None), "dataset", None)
        if dataset is not None:
            split, fewshot = dataset_files(dataset, cfg.DATASET.NUM_SHOTS, cfg.SEED)
            self.record["split"] = relative_file(split, cfg.DATASET.ROOT)
            self.record["fewshot"] = relative_file(fewshot, cfg.DATASET.ROOT)
        self.write()

    def phase(self, name):
        return _Phase(self, name)

    def finish(self):
        """The run ended normally: final metrics from its log, end time."""
        if not self.write_enabled:
            return
        sys.stdout.flush()   # the log file (dassl's Logger) holds the final results once flushed
        _, log_path = read_run_result(self.folder)
        if log_path:
            self.record["metrics"] = {key: read_result(log_path, key) for key in ("accuracy", "error", "macro_f1")}
        self.record.update(status="finished", finished=now())
        self.write()


class _Phase:
    """Wall time of one phase (build, train, evaluate) into the record, written when it ends."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __enter__(self):
        self.start = time.monotonic()

    def __exit__(self, *exc):
        self.owner.record.setdefault("phases", {})[self.name] = round(time.monotonic() - self.start, 3)
        self.owner.write()


def differences(recorded, new_request, root, allow_code_change=False):
    """The keys in which a finished run's record differs from what a new call (its request, its DATASET.ROOT)
    would run: config keys by name, then weights, split, fewshot, model and code."""
    old_request = recorded.get("request") or {}
    keys = sorted(k for k in set(old_request) | set(new_request)
                  if k not in PLACE_KEYS and old_request.get(k, "<unset>") != new_request.get(k, "<unset>"))
    weights = recorded.get("weights") or {}
    if weights.get("sha256") and weights.get("name") == new_request.get("MODEL.BACKBONE.NAME", weights.get("name")):
        now_weights = fingerprint(weights.get("path"), weights)
        if now_weights and now_weights["sha256"] != weights["sha256"]:
            keys.append("weights")
    for name in ("split", "fewshot"):
        old = recorded.get(name) or {}
        if old.get("sha256"):
            path = osp.join(root, old["relpath"]) if root and not osp.isabs(old["relpath"]) else old["relpath"]
            found = fingerprint(path, old if osp.abspath(path) == old.get("path") else None)
            if found and found["sha256"] != old["sha256"]:
                keys.append(name)
    model = recorded.get("model") or {}
    if model.get("dir"):
        trained = read_record(model["dir"])
        if trained and trained.get("run_id") != model.get("run_id"):
            keys.append("model")
    if not allow_code_change and not same_code(recorded.get("code") or {}, code_version()):
        keys.append("code")
    return keys


def check(folder, train_argv, allow_code_change=False):
    """(state, keys): SAME, UNKNOWN (no run.json) or STALE with the keys that differ."""
    recorded = read_record(folder)
    if recorded is None:
        return UNKNOWN, []
    args = build_parser().parse_args(train_argv)
    keys = differences(recorded, request(args), args.root, allow_code_change)
    return (STALE, keys) if keys else (SAME, [])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.provenance", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("check",))
    parser.add_argument("run_dir")
    parser.add_argument("--allow-code-change", action="store_true", help="a run of other code is not stale")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- and train.py's arguments")
    args = parser.parse_args(argv)
    train_argv = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    try:
        state, keys = check(args.run_dir, train_argv, args.allow_code_change)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"tools.provenance: error: {error}", file=sys.stderr)
        return 2
    print(state + (f"\t{', '.join(keys)}" if keys else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
