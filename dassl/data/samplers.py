"""The two samplers the CoOp family uses."""
from torch.utils.data.sampler import RandomSampler, SequentialSampler

AVAI_SAMPLERS = ("RandomSampler", "SequentialSampler")


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=2):
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    raise ValueError(f"Unknown sampler {sampler_type!r}; this project supports {list(AVAI_SAMPLERS)}")
