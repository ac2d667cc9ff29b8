"""CLIP for prompt learning: OpenAI-compatible weights and tokenizer, plus prompt entry points."""
from .clip import (
    _MODELS,
    CLIPWeightsError,
    _download,
    _transform,
    available_models,
    input_resolution,
    load,
    load_clip_model,
    load_state_dict_from,
    tokenize,
)
from .model import build_model
