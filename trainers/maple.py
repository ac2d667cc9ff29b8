"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompts, the image prompts projected from the text ones.

Text: CoOp's context (the first N_CTX tokens of CTX_INIT) and deep text prompts at layers 1 .. J-1. Image:
``proj(ctx)`` appended after the patches, and at layer i the projection of layer i's text prompt. All eight
per-layer projections start as copies of one freshly initialised linear layer, as in the official code.
"""
import copy

from torch import nn

from dassl.engine import TRAINER_REGISTRY

from .checkpoint_layout import TrainableStateDict
from .common import (
    PromptedCLIP,
    WholeModelPromptTrainer,
    check_init_phrase,
    declare_trainer_node,
    init_phrase_or_none,
    initial_context,
    require_vit,
)
from .deep_prompts import check_prompt_depth, prompt_parameter, trains_prompts
from .official_draws import Linear, clip_construction, context, normal_like


def extend_cfg(cfg):
    declare_trainer_node(cfg, "MAPLE", N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9)


class MultiModalPromptLearner(nn.Module):
    """Everything MaPLe learns, under the official names."""

    def __init__(self, ctx, depth, vision_width):
        super().__init__()
        n_ctx, text_width = ctx.shape
        self.ctx = nn.Parameter(ctx)
        self.proj = nn.Linear(text_width, vision_width)
        self.compound_prompts_text = nn.ParameterList(
            [prompt_parameter(n_ctx, text_width) for _ in range(depth - 1)]
        )
        coupling = nn.Linear(text_width, vision_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(coupling) for _ in range(depth - 1)])

    def forward(self):
        """(deep text prompts, image input prompts, deep image prompts): the image side is a function of
        the text side."""
        deep_image = [project(text) for project, text in zip(self.compound_prompt_projections,
                                                              self.compound_prompts_text)]
        return list(self.compound_prompts_text), self.proj(self.ctx), deep_image


class MaPLeCLIP(TrainableStateDict, PromptedCLIP):
    def __init__(self, node, classnames, clip_model):
        require_vit(clip_model, "MaPLe")
        phrase = init_phrase_or_none(node.CTX_INIT, node.N_CTX, "TRAINER.MAPLE.N_CTX")
        super().__init__(clip_model, classnames, node.N_CTX, phrase)
        for tower in (self.text_encoder.transformer, clip_model.visual.transformer):
            check_prompt_depth(tower, node.PROMPT_DEPTH, "TRAINER.MAPLE.PROMPT_DEPTH")
        ctx = initial_context(self.class_prompts, node.N_CTX, self.ctx_dim, phrase)
        self.prompt_learner = MultiModalPromptLearner(ctx, node.PROMPT_DEPTH, clip_model.visual.width)

    def trains(self, name):
        return trains_prompts(name)

    def forward(self, image):
        deep_text, image_prompts, deep_image = self.prompt_learner()
        text = self.encode_instance_text(self.prompt_learner.ctx[None], deep_text)[0]
        image_features = self.encode_image(image, prompts=image_prompts, deep_prompts=deep_image)
        return self.logit_scale.exp() * image_features @ text.t()


@TRAINER_REGISTRY.register()
class MaPLe(WholeModelPromptTrainer):
    CFG_NODE = "MAPLE"
    MODEL_NAME = "MultiModalPromptLearner"

    @classmethod
    def validate_cfg(cls, cfg):
        super().validate_cfg(cfg)
        node = cfg.TRAINER.MAPLE
        if node.PROMPT_DEPTH < 1 or node.N_CTX < 1:
            raise ValueError(f"TRAINER.MAPLE.PROMPT_DEPTH ({node.PROMPT_DEPTH}) and N_CTX ({node.N_CTX}) must be "
                             "at least 1 (depth 1: prompts at the input only)")
        check_init_phrase(node.CTX_INIT, node.N_CTX, "TRAINER.MAPLE.N_CTX")

    def build_custom_clip(self, cfg, classnames, clip_model):
        return MaPLeCLIP(cfg.TRAINER.MAPLE, classnames, clip_model)

    def official_draws(self, clip_model):
        """maple.py: its CLIP; in MultiModalPromptLearner a random context, ``proj``, the deep text prompts,
        then one coupling layer that all ``compound_prompt_projections`` copy (drawn even at depth 1)."""
        learner = self.model.prompt_learner
        proj = learner.proj
        return clip_construction(clip_model) + context(self.model) + [
            Linear(proj.in_features, proj.out_features, "proj", into=(proj,)),
            *[normal_like(prompt, "deep text prompt", keep=True) for prompt in learner.compound_prompts_text],
            Linear(proj.in_features, proj.out_features, "coupling",
                   into=tuple(learner.compound_prompt_projections)),
        ]
