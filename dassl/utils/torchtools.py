"""Checkpoints that load with ``torch.load(weights_only=True)``, written atomically, plus RNG capture.

Dassl.pytorch pickles scheduler objects into its checkpoints, which current torch refuses to load by
default; here a checkpoint holds only tensors and plain Python values, and Dassl.pytorch's files are read
too, their pickled schedulers as data (``legacy_checkpoint``).
"""
import os
import os.path as osp
import pickle
import random
import shutil
import zipfile
from collections import OrderedDict

import numpy as np
import torch

from .atomic import atomic_write
from .distributed import collective_device, is_distributed
from .legacy_checkpoint import MalformedCheckpoint, load_weights_only, refused_global
from .scheduler_state import SchedulerMismatch, checked_state

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "resume_from_checkpoint",
    "load_pretrained_weights",
    "count_num_param",
    "capture_rng_state",
    "restore_rng_state",
    "CheckpointError",
    "check_checkpoint",
    "load_optimizer_and_scheduler",
]

POINTER_FILE = "checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, torn, or holds something other than weights."""


def capture_rng_state():
    """Every random stream a training step can touch, as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state):
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True, model_name=""):
    """Write ``model.pth.tar-<epoch>`` (or ``model_name``) and the ``checkpoint`` pointer, atomically."""
    os.makedirs(save_dir, exist_ok=True)
    if remove_module_from_keys:
        state = dict(state)
        state["state_dict"] = OrderedDict(
            (k[7:] if k.startswith("module.") else k, v) for k, v in state["state_dict"].items()
        )
    if not model_name:
        model_name = f"model.pth.tar-{state['epoch']}"
    fpath = osp.join(save_dir, model_name)
    try:
        with atomic_write(fpath) as handle:
            torch.save(state, handle)
        with atomic_write(osp.join(save_dir, POINTER_FILE), mode="w") as handle:
            handle.write(model_name + "\n")
    except OSError as error:
        raise CheckpointError(
            f"Could not write checkpoint {fpath} ({error}; is the disk full?). "
            "Earlier checkpoints are untouched; free space and rerun the same command to resume"
        ) from error
    print(f"Checkpoint saved to {fpath}")
    if is_best:
        best_fpath = osp.join(save_dir, "model-best.pth.tar")
        with atomic_write(best_fpath) as handle, open(fpath, "rb") as source:
            shutil.copyfileobj(source, handle)
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


def load_checkpoint(fpath):
    """Tensors and plain values, plus the scheduler objects Dassl.pytorch pickles (read as data); a file
    holding any other pickled object is refused before anything in it runs."""
    if fpath is None or not osp.isfile(fpath):
        raise FileNotFoundError(f'No checkpoint file at "{fpath}"')
    map_location = None if torch.cuda.is_available() else "cpu"
    if is_distributed() and collective_device().type == "cuda":  # each process's GPU, not all cuda:0
        map_location = collective_device()
    try:
        return load_weights_only(fpath, map_location)
    except MalformedCheckpoint as error:
        raise CheckpointError(
            f'Refusing to load "{fpath}": {error} (no training run of this project or of Dassl.pytorch writes '
            "such a file); nothing in it was run. Use the checkpoint the training run wrote"
        ) from None
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f'Refusing to load "{fpath}": it holds a pickled {refused_global(error)}, which no checkpoint of '
            "this project or of Dassl.pytorch contains; nothing in it was run. Use the checkpoint the "
            "training run wrote, or re-save the weights as a plain state dict of tensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f'Checkpoint "{fpath}" is truncated or corrupt: {error}') from error


def check_checkpoint(checkpoint, fpath):
    """A loaded file must be a Dassl checkpoint: a dict with ``state_dict`` (names -> tensors) and ``epoch``."""
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f'"{fpath}" is not a checkpoint: it holds no state_dict of tensors')
    epoch = checkpoint.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointError(f'"{fpath}" is not a complete checkpoint: its epoch is missing (or not a count)')
    val_result = checkpoint.get("val_result")
    if val_result is not None and (isinstance(val_result, bool) or not isinstance(val_result, (int, float))):
        raise CheckpointError(f'"{fpath}" is not a checkpoint of a training run: its val_result is a '
                              f"{type(val_result).__name__}, not a number")
    return checkpoint


def load_optimizer_and_scheduler(checkpoint, fpath, optimizer, scheduler):
    """The optimizer's and scheduler's states from a checkpoint; the scheduler's only through its own
    keys, types and ranges (``scheduler_state``), so no value read can replace one of its methods."""
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError, TypeError) as error:
            reason = " ".join(str(error).split())
            raise CheckpointError(f'"{fpath}": its optimizer state does not fit this run\'s optimizer ({reason}); '
                                  "use the checkpoint the training run wrote") from None
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        try:
            scheduler.load_state_dict(checked_state(checkpoint["scheduler"], scheduler.state_dict()))
        except SchedulerMismatch as error:
            raise CheckpointError(f'"{fpath}": {error}') from None
        print("Loaded scheduler")


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None):
    """Restore from the file the ``checkpoint`` pointer names; return the epoch to start from."""
    with open(osp.join(fdir, POINTER_FILE), "r") as handle:
        model_name = handle.readlines()[0].strip()
    fpath = osp.join(fdir, model_name)
    print(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    print("Loaded model weights")
    load_optimizer_and_scheduler(checkpoint, fpath, optimizer, scheduler)
    start_epoch = checkpoint["epoch"]
    print(f"Previous epoch: {start_epoch}")
    return start_epoch


def load_pretrained_weights(model, weight_path):
    """Copy the tensors whose names and shapes match; report the rest."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint)
    model_dict = model.state_dict()
    matched, discarded = OrderedDict(), []
    for key, value in state_dict.items():
        key = key[7:] if key.startswith("module.") else key
        if key in model_dict and model_dict[key].size() == value.size():
            matched[key] = value
        else:
            discarded.append(key)
    model_dict.update(matched)
    model.load_state_dict(model_dict)
    if not matched:
        print(f'Cannot load "{weight_path}" (check the key names manually)')
    else:
        print(f'Successfully loaded pretrained weights from "{weight_path}"')
        if discarded:
            print(f"Layers discarded due to unmatched keys or size: {discarded}")


def count_num_param(model=None, params=None):
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        total = 0
        for param in params:
            if isinstance(param, dict):
                total += sum(p.numel() for p in param["params"])
            else:
                total += param.numel()
        return total
    raise ValueError("model and params must be provided")
