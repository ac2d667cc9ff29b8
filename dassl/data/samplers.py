"""The two samplers the CoOp family uses, and their torchrun counterparts."""
from torch.utils.data.distributed import DistributedSampler
from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler

from dassl.utils.distributed import get_rank, get_world_size

AVAI_SAMPLERS = ("RandomSampler", "SequentialSampler")


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=2):
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    raise unknown_sampler(sampler_type)


def unknown_sampler(sampler_type):
    return ValueError(f"Unknown sampler {sampler_type!r}; this project supports {list(AVAI_SAMPLERS)}")


class ShardSampler(Sampler):
    """Indices ``rank, rank + W, rank + 2W, ...``: across the W processes every item exactly once, in
    order, with no padding (so an evaluation counts each image once; a shard may be one item shorter)."""

    def __init__(self, size, rank, world_size):
        self.size = size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.size, self.world_size))


def build_distributed_sampler(sampler_type, data_source, is_train, seed):
    """Under torchrun. Training: torch's DistributedSampler, a disjoint shard per process (padded to
    equal length, as DDP needs the same number of steps everywhere), shuffled by ``seed + epoch`` when
    ``sampler_type`` is RandomSampler (the trainer calls ``set_epoch``). Evaluation: ``ShardSampler``."""
    if sampler_type not in AVAI_SAMPLERS:
        raise unknown_sampler(sampler_type)
    if is_train:
        return DistributedSampler(data_source, num_replicas=get_world_size(), rank=get_rank(),
                                  shuffle=sampler_type == "RandomSampler", seed=seed)
    return ShardSampler(len(data_source), get_rank(), get_world_size())
