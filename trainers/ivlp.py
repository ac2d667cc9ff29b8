"""IVLP (Khattak et al., CVPR 2023, MaPLe's repository): independent deep prompts in both towers.

The text side is CoOp's context plus a learned replacement for it at the input of text layers
1 .. J_t - 1; the image side has its own prompts appended after the patches and replaced at layers
1 .. J_v - 1. Neither branch sees the other's prompts. Names and registration follow the official code, so
its checkpoints (``VLPromptLearner/``) load here.
"""

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
from .coop import CoOpPromptLearner
from .deep_prompts import add_deep_prompts, add_visual_prompts, deep_prompts, trains_prompts, visual_prompts
from .official_draws import clip_construction, context


def extend_cfg(cfg):
    declare_trainer_node(cfg, "IVLP", N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16",
                         PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9)


class IndependentPromptsCLIP(TrainableStateDict, PromptedCLIP):
    """CLIP with independent deep prompts in both towers; the whole model is registered (its trained
    tensors only are saved)."""

    def __init__(self, node, classnames, clip_model, method="IVLP"):
        require_vit(clip_model, method)
        phrase = init_phrase_or_none(node.CTX_INIT, node.N_CTX_TEXT, f"TRAINER.{method.upper()}.N_CTX_TEXT")
        super().__init__(clip_model, classnames, node.N_CTX_TEXT, phrase)
        ctx = initial_context(self.class_prompts, node.N_CTX_TEXT, self.ctx_dim, phrase)
        self.prompt_learner = CoOpPromptLearner(ctx)
        add_deep_prompts(self.text_encoder.transformer, node.N_CTX_TEXT, node.PROMPT_DEPTH_TEXT,
                         f"TRAINER.{method.upper()}.PROMPT_DEPTH_TEXT")
        add_visual_prompts(self.image_encoder, node.N_CTX_VISION, node.PROMPT_DEPTH_VISION,
                           f"TRAINER.{method.upper()}.PROMPT_DEPTH_VISION")

    def trains(self, name):
        return trains_prompts(name)

    def class_text(self):
        """(C, E) normalised: the shared ``[SOS] ctx`` runs once, the deep prompts replace it layer by layer."""
        ctx = self.prompt_learner.ctx[None]
        return self.encode_instance_text(ctx, deep_prompts(self.text_encoder.transformer))[0]

    def prompted_image(self, image):
        return self.encode_image(image, **visual_prompts(self.image_encoder))

    def forward(self, image):
        return self.logit_scale.exp() * self.prompted_image(image) @ self.class_text().t()


def validate_prompt_sizes(node_name, node):
    """Depth J counts the input layer (text: at least 1, the context itself; vision: 0 means no image
    prompts); the upper bound, the tower's layers, is checked once the backbone is loaded."""
    if node.PROMPT_DEPTH_TEXT < 1:
        raise ValueError(f"TRAINER.{node_name}.PROMPT_DEPTH_TEXT is {node.PROMPT_DEPTH_TEXT}; use 1 or more "
                         "(1: the input context only)")
    if node.PROMPT_DEPTH_VISION < 0:
        raise ValueError(f"TRAINER.{node_name}.PROMPT_DEPTH_VISION is {node.PROMPT_DEPTH_VISION}; use 0 "
                         "(no image prompts) or more")
    if node.N_CTX_TEXT < 1 or (node.PROMPT_DEPTH_VISION >= 1 and node.N_CTX_VISION < 1):
        raise ValueError(f"TRAINER.{node_name}.N_CTX_TEXT ({node.N_CTX_TEXT}) and, with image prompts, "
                         f"N_CTX_VISION ({node.N_CTX_VISION}) must be at least 1")
    check_init_phrase(node.CTX_INIT, node.N_CTX_TEXT, f"TRAINER.{node_name}.N_CTX_TEXT")


@TRAINER_REGISTRY.register()
class IVLP(WholeModelPromptTrainer):
    CFG_NODE = "IVLP"
    MODEL_NAME = "VLPromptLearner"

    @classmethod
    def validate_cfg(cls, cfg):
        super().validate_cfg(cfg)
        validate_prompt_sizes(cls.CFG_NODE, cfg.TRAINER[cls.CFG_NODE])

    def build_custom_clip(self, cfg, classnames, clip_model):
        return IndependentPromptsCLIP(cfg.TRAINER.IVLP, classnames, clip_model)

    def official_draws(self, clip_model):
        """independentVL.py: its modified CLIP, which draws the prompts inside, then a random context."""
        return clip_construction(clip_model, prompts=True) + context(self.model)
