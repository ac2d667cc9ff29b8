"""torchrun support: the process group, who this process is, and the few collectives the engine needs.

``torchrun --nproc_per_node=N train.py ...`` starts N processes with WORLD_SIZE, RANK and LOCAL_RANK in
their environment. Without them (or with WORLD_SIZE=1) every helper here is a no-op that answers as
the only process would, so single-process runs take exactly the code path they always took.
"""
import contextlib
import os
import random
from datetime import timedelta

import torch
import torch.distributed as dist

# Rank 0 builds the trainer first (it may download CLIP or write dataset caches) while the others wait
# at a barrier, so the process group's timeout must cover a slow first build, not only a collective.
PROCESS_GROUP_TIMEOUT = timedelta(hours=1)

_shared_seed = None


def launched_distributed():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(use_cuda):
    """Join torchrun's process group (nccl on CUDA, gloo otherwise); False when not under torchrun."""
    global _shared_seed
    if not launched_distributed():
        return False
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    _shared_seed = broadcast_object(random.SystemRandom().randrange(2**31))
    return True


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


def shared_seed(seed):
    """``seed`` when it is set (>= 0), else one random seed that every process agreed on at start."""
    return seed if seed >= 0 else _shared_seed


def collective_device():
    """Where this process's collectives run: its GPU under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier():
    if is_distributed():
        device = collective_device()
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block alone; the others run it after rank 0 has finished it."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def broadcast_object(obj):
    """Rank 0's ``obj``, on every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0, device=collective_device())
    return holder[0]


def gather_to_main(obj):
    """Rank 0 gets the list of every rank's ``obj`` (in rank order); the others get None."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size() if is_main_process() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def max_over_ranks(value):
    """The largest of the processes' integers ``value``."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def destroy_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
