"""Small random CLIPs in OpenAI's layout, for tests and CPU experiments that must take seconds.

They go through the same ``build_model`` as official weights, keep the real 49,408-token vocabulary
(so the real tokenizer works) and CLIP's 77-token context.
"""
import torch

from .model import CLIP, build_model

TINY_ARCHS = {
    "vit": dict(embed_dim=32, image_resolution=32, vision_layers=3, vision_width=64, vision_patch_size=8,
                context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                transformer_layers=2),
    "rn": dict(embed_dim=32, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8,
               vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
               transformer_heads=1, transformer_layers=2),
}


def tiny_state_dict(arch="vit", seed=0, **overrides):
    """A fp32 state dict of a random CLIP; the same ``seed`` gives the same tensors."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"arch must be one of {list(TINY_ARCHS)}")
    config = dict(TINY_ARCHS[arch], **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**config)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def build_tiny_clip(arch="vit", seed=0, **overrides):
    """Through ``build_model``, so fp16 conversion and strict loading are exercised too."""
    return build_model(tiny_state_dict(arch, seed, **overrides))


def save_tiny_clip(path, arch="vit", seed=0, **overrides):
    torch.save(tiny_state_dict(arch, seed, **overrides), path)
    return path
