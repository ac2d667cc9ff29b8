"""Learnable deep prompts inside CLIP's towers, under the names the official code gives them.

IVLP, VPT and PromptSRC keep one ``VPT_shallow`` (n, width) parameter on each transformer block 1 .. J-1
(what replaces the prompt tokens at that block's input) and the image tower's input prompts as
``image_encoder.VPT``; their checkpoints hold exactly these names, so released models load here. Both
towers inject them through ``Transformer.forward_batch_first(deep_prompts=...)``.
"""
import torch
from torch import nn

from .common import BackboneMismatch

PROMPT_STD = 0.02


def prompt_parameter(n_tokens, width):
    """N(0, 0.02), fp32 whatever the run's precision (cast where it enters CLIP)."""
    return nn.Parameter(torch.randn(n_tokens, width) * PROMPT_STD)


def check_prompt_depth(transformer, depth, key):
    """Prompts reach at most every layer of a tower; ``key`` names the config value in the message."""
    if depth > transformer.layers:
        raise BackboneMismatch(f"{key} is {depth}, but this backbone's tower has {transformer.layers} layers; "
                               f"use at most {transformer.layers}")


def add_deep_prompts(transformer, n_tokens, depth, key):
    """``VPT_shallow`` on blocks 1 .. depth - 1 (block 0's prompts are the input prompts)."""
    check_prompt_depth(transformer, depth, key)
    for block in list(transformer.resblocks)[1:depth]:
        block.VPT_shallow = prompt_parameter(n_tokens, transformer.width)


def deep_prompts(transformer):
    """The blocks' ``VPT_shallow`` in layer order: what ``forward_batch_first(deep_prompts=...)`` takes."""
    return [block.VPT_shallow for block in transformer.resblocks if hasattr(block, "VPT_shallow")]


def add_visual_prompts(visual, n_tokens, depth, key):
    """Input prompts ``visual.VPT`` plus deep prompts to depth ``depth``; depth 0: none at all."""
    if depth >= 1:
        visual.VPT = prompt_parameter(n_tokens, visual.width)
        add_deep_prompts(visual.transformer, n_tokens, depth, key)


def visual_prompts(visual):
    """Keyword arguments for the image tower: its input and deep prompts, or nothing."""
    if not hasattr(visual, "VPT"):
        return {}
    return {"prompts": visual.VPT, "deep_prompts": deep_prompts(visual.transformer)}


def trains_prompts(name):
    """The official selection by name: prompt learner and every VPT parameter."""
    return "prompt_learner" in name or "VPT" in name
