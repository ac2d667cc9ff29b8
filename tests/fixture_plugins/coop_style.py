"""CoCoOp written the way CoOp's repository writes its trainers: against OpenAI's ``clip`` API and
Dassl.pytorch's trainer API only, nothing of this project's own.

Its own ``load_clip_to_cpu``, a text encoder that permutes to OpenAI's sequence-first layout around
``transformer``, a per-image loop over the classes, ``token_prefix``/``token_suffix`` buffers that go into
its checkpoints and are deleted again by its ``load_model``. Loaded through
$MUPL_EXTRA_PLUGINS=fixture_plugins.coop_style with tests/ on PYTHONPATH, it checks that such code runs
here unchanged and gets the numbers OpenAI's CLIP gives.
"""
import os.path as osp
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

import clip
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint


def extend_cfg(cfg):
    if "EXTCOCOOP" not in cfg.TRAINER:
        cfg.TRAINER.EXTCOCOOP = CN({"CTX_INIT": "a photo of a"})


def load_clip_to_cpu(cfg):
    name = cfg.MODEL.BACKBONE.NAME
    model_path = clip._download(clip._MODELS[name]) if name in clip._MODELS else name
    try:
        state_dict = torch.jit.load(model_path, map_location="cpu").eval().state_dict()
    except RuntimeError:
        state_dict = torch.load(model_path, map_location="cpu")
    return clip.build_model(state_dict)


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts, tokenized_prompts):
        x = prompts + self.positional_embedding.type(self.dtype)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_final(x).type(self.dtype)
        return x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ self.text_projection


class PromptLearner(nn.Module):
    def __init__(self, ctx_init, classnames, clip_model):
        super().__init__()
        dtype = clip_model.dtype
        ctx_dim = clip_model.ln_final.weight.shape[0]
        vis_dim = clip_model.visual.output_dim
        n_ctx = len(ctx_init.split(" "))
        with torch.no_grad():
            init_embedding = clip_model.token_embedding(clip.tokenize(ctx_init)).type(dtype)
        self.ctx = nn.Parameter(init_embedding[0, 1 : 1 + n_ctx, :])
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
        ]))
        names = [name.replace("_", " ") for name in classnames]
        self.tokenized_prompts = torch.cat([clip.tokenize(f"{ctx_init} {name}.") for name in names])
        with torch.no_grad():
            embedding = clip_model.token_embedding(self.tokenized_prompts).type(dtype)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :])
        self.n_cls = len(names)

    def forward(self, image_features):
        ctx_shifted = self.ctx.unsqueeze(0) + self.meta_net(image_features).unsqueeze(1)
        return torch.stack([
            torch.cat([self.token_prefix, ctx_i.unsqueeze(0).expand(self.n_cls, -1, -1), self.token_suffix], dim=1)
            for ctx_i in ctx_shifted
        ])


class CustomCLIP(nn.Module):
    def __init__(self, ctx_init, classnames, clip_model):
        super().__init__()
        self.prompt_learner = PromptLearner(ctx_init, classnames, clip_model)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image, label=None):
        image_features = self.image_encoder(image.type(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        logits = []
        for prompts_i, image_feature in zip(self.prompt_learner(image_features), image_features):
            text_features = self.text_encoder(prompts_i, self.tokenized_prompts)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            logits.append(self.logit_scale.exp() * image_feature @ text_features.t())
        logits = torch.stack(logits)
        if self.prompt_learner.training:
            return F.cross_entropy(logits, label)
        return logits


@TRAINER_REGISTRY.register()
class ExternalCoCoOp(TrainerX):
    def build_model(self):
        clip_model = load_clip_to_cpu(self.cfg).float()  # CoOp's "fp32" precision: the CPU has no fp16 path
        classnames = self.dm.dataset.classnames
        self.model = CustomCLIP(self.cfg.TRAINER.EXTCOCOOP.CTX_INIT, classnames, clip_model)
        for name, param in self.model.named_parameters():
            if "prompt_learner" not in name:
                param.requires_grad_(False)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = batch["img"].to(self.device), batch["label"].to(self.device)
        loss = self.model(image, label)
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}

    def load_model(self, directory, epoch=None):
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint["state_dict"]
            del state_dict["token_prefix"]
            del state_dict["token_suffix"]
            print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
            self._models[name].load_state_dict(state_dict, strict=False)
