"""MuPL (Long et al., IJCV 2024): mutual prompting between CLIP's text and image branches.

FTP (image -> text) gives each context token its own image-conditioned meta-token; TVP (text -> image)
turns the image's top-K class prompts into visual prompt tokens. docs/method.md walks through one
forward pass and names the config key of every design choice.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY

from .cocoop import meta_net
from .common import (
    BackboneMismatch,
    PromptedCLIP,
    PromptLearner,
    PromptTrainer,
    TemplateTextFeatures,
    context_size,
    declare_trainer_node,
    initial_context,
)
from .templates import DEFAULT_TEMPLATE

FTP_MODES = ("shared", "independent", "cocoop")
TVP_TEXTS = ("learned", "frozen")


def extend_cfg(cfg):
    node = declare_trainer_node(cfg, "MUPL", N_CTX=4, CTX_INIT="a photo of a", PREC="fp16")
    if "FTP" not in node:
        node.FTP = CN({"ENABLED": True, "MODE": "shared", "ZERO_INIT": True})
    if "TVP" not in node:
        node.TVP = CN(
            {"ENABLED": True, "TEXT": "learned", "TOPK": 4, "TEMP": 0.01, "DEPTH": 1,
             "DETACH_TEXT": False}
        )
    if "LOSS" not in node:
        node.LOSS = CN({"CONTRASTIVE_WEIGHT": 0.0})


class MetaTokens(nn.Module):
    """FTP's meta-net: the image feature (B, E) -> one meta-token per context slot (B, M, D)."""

    def __init__(self, mode, embed_dim, ctx_dim, n_ctx, zero_init):
        super().__init__()
        if mode not in FTP_MODES:
            raise ValueError(f"FTP.MODE must be one of {FTP_MODES}, got {mode!r}")
        self.mode, self.n_ctx, self.ctx_dim = mode, n_ctx, ctx_dim
        if mode == "shared":
            self.nets = nn.ModuleList([meta_net(embed_dim, n_ctx * ctx_dim)])
        elif mode == "independent":
            self.nets = nn.ModuleList([meta_net(embed_dim, ctx_dim) for _ in range(n_ctx)])
        else:
            self.nets = nn.ModuleList([meta_net(embed_dim, ctx_dim)])
        if zero_init:
            for net in self.nets:
                nn.init.zeros_(net.linear2.weight)
                nn.init.zeros_(net.linear2.bias)

    def forward(self, image_features):
        batch = image_features.shape[0]
        if self.mode == "shared":
            return self.nets[0](image_features).view(batch, self.n_ctx, self.ctx_dim)
        if self.mode == "independent":
            return torch.stack([net(image_features) for net in self.nets], dim=1)
        return self.nets[0](image_features)[:, None].expand(batch, self.n_ctx, self.ctx_dim)


class TextReorganizedVisualPrompt(nn.Module):
    """TVP: the image's top-K class text features, softmax-weighted, projected into K visual tokens.

    Layer 0's tokens enter after the patch embedding; with depth J > 1, layers 1 .. J-1 get their own
    projection of the same reorganized text.
    """

    def __init__(self, embed_dim, vision_width, topk, temperature, depth):
        super().__init__()
        if topk < 1 or depth < 1:
            raise ValueError("TVP.TOPK and TVP.DEPTH must be at least 1")
        self.topk, self.temperature = topk, temperature
        self.projections = nn.ModuleList(
            [
                nn.Sequential(
                    OrderedDict([("linear", nn.Linear(embed_dim, vision_width)),
                                 ("norm", nn.LayerNorm(vision_width))])
                )
                for _ in range(depth)
            ]
        )
        self.slots = nn.Parameter(torch.randn(depth, topk, vision_width) * 0.02)

    def reorganize(self, image_features, class_text):
        """(B, E) and (B, C, E) -> the weighted top-K text (B, K, E), K = min(TOPK, C)."""
        k = min(self.topk, class_text.shape[1])
        scores = torch.einsum("be,bce->bc", image_features, class_text)
        top_scores, top_classes = scores.topk(k, dim=-1)
        weights = F.softmax(top_scores / self.temperature, dim=-1)
        chosen = torch.gather(
            class_text, 1, top_classes[..., None].expand(-1, -1, class_text.shape[-1])
        )
        return weights[..., None] * chosen

    def forward(self, image_features, class_text):
        """Visual prompts (B, K, W) for the input and a list of J - 1 deep prompts (B, K, W)."""
        text = self.reorganize(image_features.float(), class_text.float())
        k = text.shape[1]
        tokens = [proj(text) + self.slots[layer, :k] for layer, proj in enumerate(self.projections)]
        return tokens[0], tokens[1:]


class MuPLPromptLearner(PromptLearner):
    """Everything MuPL trains (and all a checkpoint holds): context V, FTP meta-net, TVP."""

    def __init__(self, ctx, meta_tokens, visual_prompt):
        super().__init__()
        self.ctx = nn.Parameter(ctx)
        self.meta_tokens = meta_tokens
        self.visual_prompt = visual_prompt

    def context(self, image_features):
        """ctx_m(x) = V_m + pi_m(x): (B, M, D)."""
        return self.ctx[None] + self.meta_tokens(image_features.float())


def symmetric_infonce(image_features, text_features, logit_scale):
    """Image-text InfoNCE over the batch; pair i is image i with its own class prompt."""
    logits = logit_scale * image_features @ text_features.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class MuPLCLIP(PromptedCLIP):
    def __init__(self, mupl_cfg, classnames, clip_model):
        n_ctx = context_size(mupl_cfg.N_CTX, mupl_cfg.CTX_INIT)
        super().__init__(clip_model, classnames, n_ctx, mupl_cfg.CTX_INIT)
        ftp, tvp = mupl_cfg.FTP, mupl_cfg.TVP
        if tvp.TEXT not in TVP_TEXTS:
            raise ValueError(f"TVP.TEXT must be one of {TVP_TEXTS}, got {tvp.TEXT!r}")
        if tvp.ENABLED and not hasattr(clip_model.visual, "transformer"):
            raise BackboneMismatch("TRAINER.MUPL.TVP prompts CLIP's image transformer and needs a ViT backbone "
                                   "(MODEL.BACKBONE.NAME ViT-B/16, ...); with a ResNet set TRAINER.MUPL.TVP.ENABLED "
                                   "False")
        self.tvp_cfg = tvp
        self.contrastive_weight = mupl_cfg.LOSS.CONTRASTIVE_WEIGHT

        mode, zero_init = (ftp.MODE, ftp.ZERO_INIT) if ftp.ENABLED else ("cocoop", False)
        meta_tokens = MetaTokens(mode, self.embed_dim, self.ctx_dim, n_ctx, zero_init)
        visual_prompt = None
        if tvp.ENABLED:
            visual_prompt = TextReorganizedVisualPrompt(
                self.embed_dim, clip_model.visual.width, tvp.TOPK, tvp.TEMP, tvp.DEPTH
            )
        ctx = initial_context(self.class_prompts, n_ctx, self.ctx_dim, mupl_cfg.CTX_INIT)
        self.prompt_learner = MuPLPromptLearner(ctx, meta_tokens, visual_prompt)
        if tvp.ENABLED and tvp.TEXT == "frozen":
            self.frozen_text = TemplateTextFeatures(clip_model, DEFAULT_TEMPLATE)

    def tvp_text(self, text_features):
        if self.tvp_cfg.TEXT == "frozen":
            frozen = self.frozen_text(self.classnames)
            return frozen.expand(text_features.shape[0], -1, -1)
        return text_features.detach() if self.tvp_cfg.DETACH_TEXT else text_features

    def features(self, image):
        """(f1 (B, E), T(x) (B, C, E)), both normalised."""
        with torch.no_grad():
            plain = self.encode_image(image)
        text = self.encode_instance_text(self.prompt_learner.context(plain))
        if self.prompt_learner.visual_prompt is None:
            return plain, text
        prompts, deep_prompts = self.prompt_learner.visual_prompt(plain, self.tvp_text(text))
        prompted = self.encode_image(
            image,
            prompts=prompts.type(self.dtype),
            deep_prompts=[p.type(self.dtype) for p in deep_prompts] or None,
        )
        return prompted, text

    def forward(self, image):
        image_features, text = self.features(image)
        return self.logit_scale.exp() * torch.einsum("be,bce->bc", image_features, text)

    def training_loss(self, image, label):
        image_features, text = self.features(image)
        scale = self.logit_scale.exp()
        logits = scale * torch.einsum("be,bce->bc", image_features, text)
        loss = F.cross_entropy(logits, label)
        if self.contrastive_weight > 0:
            own_text = text[torch.arange(label.shape[0], device=label.device), label]
            loss = loss + self.contrastive_weight * symmetric_infonce(image_features, own_text, scale)
        return loss, logits


@TRAINER_REGISTRY.register()
class MuPL(PromptTrainer):
    CFG_NODE = "MUPL"

    @classmethod
    def validate_cfg(cls, cfg):
        super().validate_cfg(cfg)
        node = cfg.TRAINER.MUPL
        checks = [
            ("FTP.MODE", node.FTP.MODE, node.FTP.MODE in FTP_MODES, f"one of {', '.join(FTP_MODES)}"),
            ("TVP.TEXT", node.TVP.TEXT, node.TVP.TEXT in TVP_TEXTS, f"one of {', '.join(TVP_TEXTS)}"),
            ("TVP.TOPK", node.TVP.TOPK, node.TVP.TOPK >= 1, "1 or more classes (clamped to the class count)"),
            ("TVP.DEPTH", node.TVP.DEPTH, node.TVP.DEPTH >= 1, "1 or more layers"),
            ("TVP.TEMP", node.TVP.TEMP, node.TVP.TEMP > 0, "a positive softmax temperature (default 0.01)"),
            ("LOSS.CONTRASTIVE_WEIGHT", node.LOSS.CONTRASTIVE_WEIGHT, node.LOSS.CONTRASTIVE_WEIGHT >= 0,
             "0 (off) or more"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"TRAINER.MUPL.{key} is {value!r}; allowed: {allowed}")

    def build_custom_clip(self, cfg, classnames, clip_model):
        return MuPLCLIP(cfg.TRAINER.MUPL, classnames, clip_model)
