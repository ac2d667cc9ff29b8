"""Reading the objects Dassl.pytorch pickles into its checkpoints, as data, under ``weights_only``.

Dassl.pytorch saves ``scheduler.state_dict()``; for its warm-up schedulers that dict holds the successor
scheduler *object*, which holds its optimizer object. Current torch refuses such files by default. Here
exactly those classes are allowed, and each is read as an inert ``PickledObject`` (its attributes, never an
instance of the class, so no method of it runs); any other pickled object is still refused.
"""
import re

import torch

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


class PickledObject:
    """The attributes of one allowed pickled object, and nothing that could run."""

    def __setstate__(self, state):
        self.__dict__.update(state)


def _plain_dict(default_factory=None):
    """An optimizer's ``state`` is a ``defaultdict``; as data a plain dict holds the same entries."""
    return {}


def allowed_globals():
    return [(PickledObject, path) for path in PICKLED_CLASSES] + [(_plain_dict, "collections.defaultdict"), dict]


def scheduler_state(state):
    """A Dassl.pytorch scheduler state with its pickled successor turned into that scheduler's own state
    dict (what ``state_dict()`` of this package's warm-up schedulers holds)."""
    if isinstance(state, dict) and isinstance(state.get("successor"), PickledObject):
        successor = {k: v for k, v in vars(state["successor"]).items() if k != "optimizer"}
        state = dict(state, successor=successor)
    return state


def refused_global(error):
    """The pickled name that made ``torch.load`` refuse a file, from its message."""
    match = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)|but got (<[^>]+>)", str(error))
    return next((group for group in match.groups() if group), "object") if match else "object"


def load_weights_only(fpath, map_location):
    with torch.serialization.safe_globals(allowed_globals()):
        checkpoint = torch.load(fpath, map_location=map_location, weights_only=True)
    if isinstance(checkpoint, dict) and "scheduler" in checkpoint:
        checkpoint["scheduler"] = scheduler_state(checkpoint["scheduler"])
    return checkpoint
