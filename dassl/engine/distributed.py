"""DistributedDataParallel for Dassl trainers, and the gathering of a sharded evaluation.

A Dassl trainer keeps its network in ``self.model`` and registers the trainable part(s) with
``register_model``; CoOp-family trainers then call the network's own methods (``training_loss``) rather
than its ``forward``. DDP only averages gradients after a forward that ran through it, so under torchrun
the engine replaces ``self.model`` by a ``DistributedModel`` (as Dassl's trainers replace theirs by an
``nn.DataParallel``) whose calls go through one DDP, whatever method they name.
"""
import inspect

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dassl.utils.distributed import gather_to_main


class _MethodCall(nn.Module):
    """The module DDP wraps: ``forward(name, ...)`` calls ``model.<name>(...)`` (``__call__`` included)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, name, *args, **kwargs):
        return getattr(self.model, name)(*args, **kwargs)


def _no_per_call_buffer_sync():
    """DDP broadcasts rank 0's buffers at construction; not again at every call, as nothing here trains a
    buffer (CLIP's class-prompt buffers can be large). The switch was renamed in recent torch."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class DistributedModel:
    """Stands in for a trainer's ``self.model`` under torchrun.

    Calling it, or calling one of the model's own methods on it (not ``nn.Module``'s: ``train``,
    ``parameters``, ...), with gradients enabled runs the call through DDP, so the backward that follows
    averages the gradients over the processes. DDP expects one such call per training step, used in that
    step's loss. Calls under ``torch.no_grad()`` (evaluation) and attribute reads go to the model itself.
    """

    def __init__(self, model, device):
        object.__setattr__(self, "module", model)
        device_ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(_MethodCall(model), device_ids=device_ids, **_no_per_call_buffer_sync())
        object.__setattr__(self, "ddp", ddp)

    def __call__(self, *args, **kwargs):
        return self._call("__call__", *args, **kwargs)

    def __getattr__(self, name):
        value = getattr(self.module, name)
        if inspect.ismethod(value) and value.__self__ is self.module and not hasattr(nn.Module, name):
            return lambda *args, **kwargs: self._call(name, *args, **kwargs)
        return value

    def __setattr__(self, name, value):
        setattr(self.module, name, value)

    def _call(self, name, *args, **kwargs):
        if torch.is_grad_enabled():
            return self.ddp(name, *args, **kwargs)
        return getattr(self.module, name)(*args, **kwargs)


def check_trainable_inside(model, registered):
    """DDP sees only ``self.model``: every trainable parameter of the registered models must be in it."""
    inside = {id(param) for param in model.parameters()} if isinstance(model, nn.Module) else set()
    for name, module in registered.items():
        if any(param.requires_grad and id(param) not in inside for param in module.parameters()):
            raise RuntimeError(
                f'Distributed training needs the registered model "{name}" to be part of the trainer\'s '
                "self.model (DDP wraps self.model)"
            )


def gather_in_dataset_order(shard, world_size):
    """Rank 0 gets (outputs, labels) of the whole evaluation set in dataset order; the others get None.

    ``shard`` is this rank's list of (output, label) CPU batches, read through ``ShardSampler``, which gave
    rank r the items r, r + W, r + 2W, ...
    """
    gathered = gather_to_main(shard)
    if gathered is None:
        return None
    pairs = [pair for rank_batches in gathered for pair in rank_batches]
    outputs = torch.cat([output for output, _ in pairs])
    labels = torch.cat([label for _, label in pairs])
    total = len(labels)
    position = torch.cat([torch.arange(rank, total, world_size) for rank in range(world_size)])
    ordered_outputs = torch.empty_like(outputs)
    ordered_labels = torch.empty_like(labels)
    ordered_outputs[position] = outputs
    ordered_labels[position] = labels
    return ordered_outputs, ordered_labels
