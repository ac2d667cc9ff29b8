"""VPT-deep (Jia et al., ECCV 2022, as MaPLe's repository runs it on CLIP): prompts in the image tower only.

Learned: ``image_encoder.VPT`` appended after the patches and ``VPT_shallow`` replacing them at layers
1 .. J-1. The classifier is fixed: CLIP's features of "a photo of a {class}." for every dataset, computed
once per class set. Registered as the official code registers it ("prompt_learner", the whole model).
"""
from torch import nn

from dassl.engine import TRAINER_REGISTRY

from .checkpoint_layout import TrainableStateDict
from .common import (
    CrossEntropyTraining,
    TemplateTextFeatures,
    WholeModelPromptTrainer,
    clip_dtype,
    declare_trainer_node,
    normalize,
    require_vit,
)
from .deep_prompts import add_visual_prompts, visual_prompts
from .official_draws import clip_construction
from .templates import DEFAULT_TEMPLATE


def extend_cfg(cfg):
    declare_trainer_node(cfg, "VPT", N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1)


class VisualPromptCLIP(TrainableStateDict, CrossEntropyTraining, nn.Module):
    OFFICIAL_EXTRAS = ("text_encoder.",)  # the official model carries a text tower it never calls

    def __init__(self, node, classnames, clip_model):
        super().__init__()
        require_vit(clip_model, "VPT")
        self.classnames = list(classnames)
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_dtype(clip_model)
        add_visual_prompts(self.image_encoder, node.N_CTX_VISION, node.PROMPT_DEPTH_VISION,
                           "TRAINER.VPT.PROMPT_DEPTH_VISION")
        self.classifier = TemplateTextFeatures(clip_model, DEFAULT_TEMPLATE)

    def trains(self, name):
        return "VPT" in name

    def forward(self, image):
        image_features = normalize(self.image_encoder(image.type(self.dtype), **visual_prompts(self.image_encoder)))
        return self.logit_scale.exp() * image_features @ self.classifier(self.classnames).t()


@TRAINER_REGISTRY.register()
class VPT(WholeModelPromptTrainer):
    CFG_NODE = "VPT"

    @classmethod
    def validate_cfg(cls, cfg):
        super().validate_cfg(cfg)
        node = cfg.TRAINER.VPT
        if node.PROMPT_DEPTH_VISION < 1 or node.N_CTX_VISION < 1:
            raise ValueError(f"TRAINER.VPT.PROMPT_DEPTH_VISION ({node.PROMPT_DEPTH_VISION}) and N_CTX_VISION "
                             f"({node.N_CTX_VISION}) must be at least 1: VPT learns nothing else")

    def build_custom_clip(self, cfg, classnames, clip_model):
        return VisualPromptCLIP(cfg.TRAINER.VPT, classnames, clip_model)

    def official_draws(self, clip_model):
        """vpt.py: its modified CLIP, which draws the image prompts inside; nothing else."""
        return clip_construction(clip_model, prompts=True)
