"""Reading the objects Dassl.pytorch pickles into its checkpoints, as data, under ``weights_only``.

Dassl.pytorch saves ``scheduler.state_dict()``; for its warm-up schedulers that dict holds the successor
scheduler *object*, which holds its optimizer object. Current torch refuses such files by default. Here
exactly those classes are allowed, each read as an inert ``PickledObject`` (its attributes in a dict, never
an instance of the class, so no method of it runs), after a dry run of the pickle (``pickle_scan``) has
bounded its memory and depth. The scheduler state is then reduced to plain numbers: the successor object
becomes its own state dict, and anything that is not a number, a flag, a name or a list of numbers is
refused, so nothing read from a file reaches a live object except through ``scheduler_state``'s checks.
"""
import math
import re
from collections import Counter

import torch

from .pickle_scan import MalformedPickle, scan_checkpoint

# What Dassl.pytorch's build_optimizer / build_lr_scheduler create (its RAdam and warm-up classes by
# Dassl's module paths, which are this package's too).
PICKLED_CLASSES = (
    "torch.optim.lr_scheduler.StepLR",
    "torch.optim.lr_scheduler.MultiStepLR",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "dassl.optim.lr_scheduler.ConstantWarmupScheduler",
    "dassl.optim.lr_scheduler.LinearWarmupScheduler",
    "torch.optim.sgd.SGD",
    "torch.optim.adam.Adam",
    "torch.optim.adamw.AdamW",
    "torch.optim.rmsprop.RMSprop",
    "dassl.optim.radam.RAdam",
)
SCHEDULER_CLASSES = PICKLED_CLASSES[:5]
MAX_INT = 2 ** 53  # beyond, an epoch count or milestone is no longer a float and breaks the LR formulas


class MalformedCheckpoint(ValueError):
    """A checkpoint whose pickled values no honest ``torch.save`` of a training run writes."""


class PickledObject:
    """The attributes of one allowed pickled object, and nothing that could run: no instance dict, so a
    pickled attribute can never shadow a method."""

    __slots__ = ("attributes",)
    path = ""

    def __setstate__(self, state):
        if hasattr(self, "attributes") or not isinstance(state, dict):
            raise MalformedCheckpoint(f"it sets the attributes of its pickled {self.path} twice or from a "
                                      f"{type(state).__name__}")
        self.attributes = dict(state)


def _inert_class(path):
    return type(path.rsplit(".", 1)[1], (PickledObject,), {"__slots__": (), "path": path})


INERT_CLASSES = {path: _inert_class(path) for path in PICKLED_CLASSES}


def _plain_dict(default_factory=None):
    """``collections.defaultdict`` (an optimizer's ``state``) and its ``dict`` factory: as data a plain
    dict holds the same entries, and neither real class is ever called."""
    return {}


def allowed_globals():
    return [(cls, path) for path, cls in INERT_CLASSES.items()] + [
        (_plain_dict, "collections.defaultdict"), (_plain_dict, "builtins.dict")]


def _is_number(value):
    if isinstance(value, bool):
        return False
    return abs(value) < MAX_INT if isinstance(value, int) else isinstance(value, float) and math.isfinite(value)


def _plain(value):
    """Numbers, flags, names, None, lists of numbers and {number: number} (MultiStepLR's milestones)."""
    if value is None or isinstance(value, (bool, str)) or _is_number(value):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_number(item) for item in value)
    if isinstance(value, dict):
        return all(_is_number(key) and _is_number(item) for key, item in value.items())
    return False


def _plain_scheduler_state(state, where="scheduler"):
    """``state`` with a pickled successor replaced by its attributes (less its optimizer), every value
    checked to be plain data."""
    if isinstance(state, PickledObject) and state.path in SCHEDULER_CLASSES:
        state = {k: v for k, v in state.attributes.items() if k != "optimizer"}
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise MalformedCheckpoint(f"its {where} state is a {type(state).__name__}, not a scheduler's state dict")
    plain = {}
    for key, value in state.items():
        if key == "successor" and where == "scheduler":
            plain[key] = _plain_scheduler_state(value, "scheduler's successor")
        elif _plain(value):
            plain[key] = Counter(value) if isinstance(value, dict) else value
        else:
            raise MalformedCheckpoint(f"its {where} state holds a {type(value).__name__} under {key!r}, where a "
                                      "scheduler keeps numbers")
    return plain


def _stray_objects(checkpoint):
    """Where a pickled object sits outside the scheduler (where Dassl.pytorch puts its only ones)."""
    todo, seen = [("checkpoint", checkpoint)], set()
    while todo:
        where, value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, PickledObject):
            yield where, value.path
        elif isinstance(value, dict):
            todo.extend((f"{where}[{key!r}]", item) for key, item in value.items())
        elif isinstance(value, (list, tuple, set)):
            todo.extend((f"{where}[{index}]", item) for index, item in enumerate(value))


def refused_global(error):
    """The pickled name that made ``torch.load`` refuse a file, from its message."""
    match = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)|but got (<[^>]+>)", str(error))
    return next((group for group in match.groups() if group), "object") if match else "object"


def load_weights_only(fpath, map_location):
    """The checkpoint at ``fpath`` as tensors and plain values; MalformedCheckpoint for one no training
    run writes (read no further than the dry run allows)."""
    try:
        scan_checkpoint(fpath, INERT_CLASSES)
    except MalformedPickle as error:
        raise MalformedCheckpoint(str(error)) from None
    except ValueError as error:  # pickletools: not a pickle at all
        raise MalformedCheckpoint(f"it is not a checkpoint: its bytes are no pickle ({error})") from None
    with torch.serialization.safe_globals(allowed_globals()):
        checkpoint = torch.load(fpath, map_location=map_location, weights_only=True)
    if isinstance(checkpoint, dict) and checkpoint.get("scheduler") is not None:
        checkpoint["scheduler"] = _plain_scheduler_state(checkpoint["scheduler"])
    for where, path in _stray_objects(checkpoint):
        raise MalformedCheckpoint(f"it holds a pickled {path} as {where}, where Dassl.pytorch writes none")
    return checkpoint
