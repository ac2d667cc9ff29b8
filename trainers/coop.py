"""CoOp (Zhou et al., IJCV 2022): learned context words shared by all classes, or one set per class."""
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
from .official_draws import clip_construction, context

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def extend_cfg(cfg):
    declare_trainer_node(
        cfg, "COOP", N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end"
    )


def place_class_name(class_prompts, ctx, position):
    """(C, L, D) prompts with the class name after ('end'), inside ('middle') or before ('front') ctx."""
    if position == "end":
        return class_prompts.assemble(ctx)
    n_classes = class_prompts.token_prefix.shape[0]
    ctx = ctx.expand(n_classes, *ctx.shape[-2:])
    half = ctx.shape[1] // 2
    rows = []
    for index in range(n_classes):
        name_len = int(class_prompts.name_lens[index])
        suffix = class_prompts.token_suffix[index]
        name, rest = suffix[:name_len], suffix[name_len:]
        prefix = class_prompts.token_prefix[index]
        if position == "front":
            parts = [prefix, name, ctx[index], rest]
        else:
            parts = [prefix, ctx[index, :half], name, ctx[index, half:], rest]
        rows.append(torch.cat(parts))
    return torch.stack(rows)


class CoOpPromptLearner(PromptLearner):
    def __init__(self, ctx):
        super().__init__()
        self.ctx = nn.Parameter(ctx)


class CoOpCLIP(PromptedCLIP):
    LEARNER = CoOpPromptLearner  # what holds ctx; KgCoOp's also knows its official checkpoint's extras

    def __init__(self, coop_cfg, classnames, clip_model):
        if coop_cfg.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"CLASS_TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}")
        n_ctx = context_size(coop_cfg.N_CTX, coop_cfg.CTX_INIT)
        super().__init__(clip_model, classnames, n_ctx, coop_cfg.CTX_INIT)
        if coop_cfg.CSC and coop_cfg.CTX_INIT:  # CoOp builds one shared context from CTX_INIT, whatever CSC says
            print("Note: TRAINER.COOP.CSC is ignored with CTX_INIT, as in CoOp: one context shared by all classes")
        leading = (len(self.classnames),) if coop_cfg.CSC and not coop_cfg.CTX_INIT else ()
        ctx = initial_context(self.class_prompts, n_ctx, self.ctx_dim, coop_cfg.CTX_INIT, leading)
        self.prompt_learner = self.LEARNER(ctx)
        self.position = coop_cfg.CLASS_TOKEN_POSITION

    def class_text(self):
        """(C, E) normalised features of the learned prompts."""
        ctx = self.prompt_learner.ctx.type(self.dtype)
        if self.position == "end" and ctx.dim() == 2:  # every class shares [SOS] ctx: it runs once
            return self.encode_instance_text(ctx[None])[0]
        prompts = place_class_name(self.class_prompts, ctx, self.position)
        return self.encode_prompts(prompts, self.class_prompts.eot)

    def forward(self, image):
        return self.logit_scale.exp() * self.encode_image(image) @ self.class_text().t()


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    CFG_NODE = "COOP"

    @classmethod
    def validate_cfg(cls, cfg):
        super().validate_cfg(cfg)
        position = cfg.TRAINER.COOP.CLASS_TOKEN_POSITION
        if position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TRAINER.COOP.CLASS_TOKEN_POSITION is {position!r}; choose one of "
                             f"{', '.join(CLASS_TOKEN_POSITIONS)}")

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CoOpCLIP(cfg.TRAINER.COOP, classnames, clip_model)

    def official_draws(self, clip_model):
        """CoOp's coop.py: its CLIP, then a random context."""
        return clip_construction(clip_model) + context(self.model)
