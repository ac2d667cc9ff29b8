"""CoCoOp (Zhou et al., CVPR 2022): one image-conditioned bias added to every context token."""
from collections import OrderedDict

import torch
from torch import nn

from dassl.engine import TRAINER_REGISTRY

from .common import (
    PromptedCLIP,
    PromptLearner,
    PromptTrainer,
    context_size,
    declare_trainer_node,
    initial_context,
)
from .official_draws import Linear, clip_construction, context


def extend_cfg(cfg):
    declare_trainer_node(cfg, "COCOOP", N_CTX=16, CTX_INIT="", PREC="fp16")


def meta_net(in_dim, out_dim):
    """CoCoOp's bottleneck: in -> in // 16 -> out."""
    hidden = in_dim // 16
    return nn.Sequential(
        OrderedDict(
            [("linear1", nn.Linear(in_dim, hidden)), ("relu", nn.ReLU(inplace=True)),
             ("linear2", nn.Linear(hidden, out_dim))]
        )
    )


class CoCoOpPromptLearner(PromptLearner):
    def __init__(self, ctx, embed_dim):
        super().__init__()
        self.ctx = nn.Parameter(ctx)
        self.meta_net = meta_net(embed_dim, ctx.shape[-1])

    def forward(self, image_features):
        """(B, E) normalised image features -> (B, n_ctx, D) instance-conditioned context."""
        bias = self.meta_net(image_features.float())
        return self.ctx[None] + bias[:, None]


class CoCoOpCLIP(PromptedCLIP):
    def __init__(self, cocoop_cfg, classnames, clip_model):
        n_ctx = context_size(cocoop_cfg.N_CTX, cocoop_cfg.CTX_INIT)
        super().__init__(clip_model, classnames, n_ctx, cocoop_cfg.CTX_INIT)
        ctx = initial_context(self.class_prompts, n_ctx, self.ctx_dim, cocoop_cfg.CTX_INIT)
        self.prompt_learner = CoCoOpPromptLearner(ctx, self.embed_dim)

    def forward(self, image):
        image_features = self.encode_image(image)
        text = self.encode_instance_text(self.prompt_learner(image_features))
        return self.logit_scale.exp() * torch.einsum("be,bce->bc", image_features, text)


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    CFG_NODE = "COCOOP"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CoCoOpCLIP(cfg.TRAINER.COCOOP, classnames, clip_model)

    def official_draws(self, clip_model):
        """CoOp's cocoop.py: its CLIP, a random context, then the meta-net's two layers."""
        net = self.model.prompt_learner.meta_net
        layers = [Linear(layer.in_features, layer.out_features, f"meta_net.{name}", into=(layer,))
                  for name, layer in (("linear1", net.linear1), ("linear2", net.linear2))]
        return clip_construction(clip_model) + context(self.model) + layers
