"""Pieces every CLIP prompt trainer shares: CLIP loading, precision, and the Dassl trainer base.

CoOp's repository copies these into every trainer file; here they live once. Trainers built on them
use only the Dassl.pytorch API plus ``clip``, so they would run on the real Dassl unchanged.
"""
import contextlib
import copy
import os
import os.path as osp

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import clip
from clip.open_clip_models import is_open_clip_name, open_clip_spec
from clip.prompting import ClassPrompts, TextEncoder
from clip.simple_tokenizer import get_tokenizer
from dassl.config import get_cfg_default
from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint, load_pretrained_weights

from .checkpoint_layout import TrainableStateDict
from .official_draws import replay

PRECISIONS = ("fp16", "fp32", "amp", "bf16")
PROMPT_LEARNER = "prompt_learner"


def extend_cfg(cfg):
    """Where CLIP weights are cached; empty means ``$CLIP_CACHE_DIR`` or ``~/.cache/clip``."""
    if "CACHE_DIR" not in cfg.MODEL.BACKBONE:
        cfg.MODEL.BACKBONE.CACHE_DIR = ""


def declare_trainer_node(cfg, name, **defaults):
    """Add ``cfg.TRAINER.<name>`` once; a second declaration leaves the first untouched."""
    if name in cfg.TRAINER:
        return cfg.TRAINER[name]
    node = CN()
    for key, value in defaults.items():
        node[key] = value
    cfg.TRAINER[name] = node
    return node


def default_trainer_node(trainer_module, name, **values):
    """``cfg.TRAINER.<name>`` with the trainer's defaults, and ``values`` over them, outside a run: for
    building a trainer's model directly (benchmarks, tests)."""
    cfg = get_cfg_default()
    trainer_module.extend_cfg(cfg)
    node = cfg.TRAINER[name]
    for key, value in values.items():
        node[key] = value
    return node


def node_with(node, **values):
    """A copy of config ``node`` with ``values`` in place of its own: a trainer that overrides a key (KgCoOp
    and ProGrad choose CoOp's initial phrase themselves) leaves the run's frozen config as it is."""
    node = node.clone()
    node.defrost()
    for key, value in values.items():
        setattr(node, key, value)
    return node


def clip_cache_dir(cfg):
    if cfg.MODEL.BACKBONE.get("CACHE_DIR", ""):
        return cfg.MODEL.BACKBONE.CACHE_DIR
    return os.environ.get("CLIP_CACHE_DIR") or osp.expanduser("~/.cache/clip")


class BackboneMismatch(ValueError):
    """A config value that does not fit the backbone (for a weights file, found only once it is loaded);
    the message names the key and the fix."""


def check_input_size(cfg, resolution, source):
    """CLIP's image encoder takes one resolution (its positional embedding is fixed): INPUT.SIZE must be it.
    train.py checks it before the run for an official model name; ``load_clip_to_cpu`` for a weights file."""
    size = tuple(cfg.INPUT.SIZE)
    if size != (resolution, resolution):
        raise BackboneMismatch(f"INPUT.SIZE is {size!r}; allowed: ({resolution}, {resolution}), the input "
                               f"resolution of {source}")


def check_open_clip_inputs(cfg):
    """An open_clip model has its own image size, mean and std: the dataset transforms (INPUT.SIZE,
    INPUT.PIXEL_MEAN, INPUT.PIXEL_STD) must be them. Known from its name, before any weights are read."""
    name = cfg.MODEL.BACKBONE.NAME
    if not is_open_clip_name(name):
        return
    spec = open_clip_spec(name, clip_cache_dir(cfg))
    check_input_size(cfg, spec.image_size, name)
    for key, expected in (("PIXEL_MEAN", spec.mean), ("PIXEL_STD", spec.std)):
        given = [float(value) for value in cfg.INPUT[key]]
        if len(given) != len(expected) or any(abs(a - b) > 1e-6 for a, b in zip(given, expected)):
            raise BackboneMismatch(f"INPUT.{key} is {given}; allowed: {list(expected)}, the image statistics "
                                   f"{name} was trained with")


def load_clip_to_cpu(cfg):
    """An fp16 CLIP in eval mode, from a ``clip._MODELS`` name, a path to a weights file or an open_clip name."""
    name = cfg.MODEL.BACKBONE.NAME
    print(f"Loading CLIP (backbone: {name})")
    check_open_clip_inputs(cfg)
    clip_model = clip.load_clip_model(name, download_root=clip_cache_dir(cfg))
    check_input_size(cfg, clip_model.visual.input_resolution, name)  # a weights file: known only now
    return clip_model


def effective_precision(prec, device):
    """fp16 kernels are a GPU feature; on the CPU fp16 runs as fp32 (said once, here)."""
    if prec not in PRECISIONS:
        raise ValueError(f"Unknown precision {prec!r}; choose one of {PRECISIONS}")
    if prec == "fp16" and device.type == "cpu":
        print("Note: PREC fp16 is not supported on the CPU; running in fp32")
        return "fp32"
    return prec


def cast_clip(clip_model, prec):
    """fp16 keeps CLIP as built (CoOp's default); fp32 and amp make it fp32; bf16 turns its fp16 tensors
    into bfloat16, leaving the tensors CLIP keeps in fp32 (layer norms, logit scale) as they are."""
    if prec in ("fp32", "amp"):
        return clip_model.float()
    if prec == "bf16":
        for tensor in list(clip_model.parameters()) + list(clip_model.buffers()):
            if tensor.dtype == torch.float16:
                tensor.data = tensor.data.to(torch.bfloat16)
    return clip_model


def require_vit(clip_model, method):
    """Visual prompts need image tokens; a ResNet has none."""
    if not hasattr(clip_model.visual, "transformer"):
        raise BackboneMismatch(f"{method} prompts CLIP's image transformer and needs a ViT backbone "
                         "(MODEL.BACKBONE.NAME ViT-B/16, ViT-B/32, ...); this backbone is a ResNet")


def clip_dtype(clip_model):
    return clip_model.text_projection.dtype


def autocast_context(prec, device):
    """amp: fp16 autocast on the GPU, bfloat16 autocast on the CPU (which has no fp16 autocast path)."""
    if prec != "amp":
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(prec, device):
    """A loss scaler only where fp16 gradients can underflow: amp on the GPU."""
    if prec != "amp":
        return None
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda")


def freeze_all_but_prompt_learner(model):
    """CLIP stays frozen; returns the names of the parameters left trainable (``model.trains(name)``, by
    default those under ``prompt_learner``)."""
    trains = getattr(model, "trains", lambda name: name.startswith(PROMPT_LEARNER + "."))
    for name, param in model.named_parameters():
        param.requires_grad_(trains(name))
    return sorted(name for name, param in model.named_parameters() if param.requires_grad)


class PromptTrainer(TrainerX):
    """Dassl trainer for a CLIP whose only trainable parts are prompts.

    Subclasses set ``CFG_NODE`` (their ``cfg.TRAINER`` node name) and implement
    ``build_custom_clip(cfg, classnames, clip_model)`` returning an ``nn.Module`` with
    ``forward(image) -> logits`` and ``training_loss(image, label) -> (loss, logits)``. What is saved is
    ``registered_module`` under ``MODEL_NAME``, as the method's official code registers it: CoOp's family
    registers ``model.prompt_learner`` as "prompt_learner"; a trainer whose prompts also live inside CLIP's
    modules registers the whole model (a ``TrainableStateDict``, so only the trained tensors are saved).
    """

    CFG_NODE = ""
    MODEL_NAME = PROMPT_LEARNER

    def registered_module(self):
        return self.model.prompt_learner

    @property
    def trainer_cfg(self):
        return self.cfg.TRAINER[self.CFG_NODE]

    @classmethod
    def validate_cfg(cls, cfg):
        """Refuse, before anything is built or written, config values this trainer cannot run: one
        ValueError naming the key, the value and what is allowed. train.py calls it first; subclasses
        extend it (``super().validate_cfg(cfg)``)."""
        check_open_clip_inputs(cfg)
        node = cfg.TRAINER[cls.CFG_NODE]
        if node.PREC not in PRECISIONS:
            raise ValueError(f"TRAINER.{cls.CFG_NODE}.PREC is {node.PREC!r}; choose one of {', '.join(PRECISIONS)}")
        if "N_CTX" in node and node.N_CTX < 1 and not node.get("CTX_INIT"):
            raise ValueError(f"TRAINER.{cls.CFG_NODE}.N_CTX is {node.N_CTX} and CTX_INIT is empty: there is no "
                             "context to learn; set N_CTX to 1 or more, or give CTX_INIT")

    def check_cfg(self, cfg):
        self.validate_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        raise NotImplementedError

    def official_draws(self, clip_model):
        """The random draws of the method's official build, from its CLIP to its first batch, as steps of
        ``trainers/official_draws.py`` over ``self.model`` (built from ``clip_model``): replayed after the
        build, so that a seed gives the official run. None: no official code to follow (MuPL)."""
        return None

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.prec = effective_precision(self.trainer_cfg.PREC, self.device)
        start = torch.get_rng_state()
        clip_model = cast_clip(load_clip_to_cpu(cfg), self.prec)

        print("Building custom CLIP")
        self.model = self.build_custom_clip(cfg, classnames, clip_model)
        replay(self.official_draws(clip_model), start)
        print(f"Parameters to be updated: {freeze_all_but_prompt_learner(self.model)}")

        if cfg.MODEL.INIT_WEIGHTS:  # a checkpoint of the registered module, this method's or its official code's
            load_pretrained_weights(self.registered_module(), cfg.MODEL.INIT_WEIGHTS)

        self.model.to(self.device)
        trained = [param for param in self.registered_module().parameters() if param.requires_grad]
        self.optim = build_optimizer(trained, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.MODEL_NAME, self.registered_module(), self.optim, self.sched)
        self.scaler = make_grad_scaler(self.prec, self.device)

    def load_model(self, directory, epoch=None):
        """This engine's loader where it runs; on Dassl.pytorch, CoOp's, since Dassl.pytorch's own formats
        the ``val_result`` of the checkpoint, which a last-epoch checkpoint holds as None (Dassl #56)."""
        if hasattr(TrainerX, "load_state_into"):  # this project's dassl
            return super().load_model(directory, epoch)
        return load_like_coop(self, directory, epoch)

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with autocast_context(self.prec, self.device):
            loss, logits = self.model.training_loss(image, label)
        terms = loss if isinstance(loss, dict) else {"loss": loss}
        self.update(terms)
        summary = {name: value.item() for name, value in terms.items()}
        summary["acc"] = compute_accuracy(logits, label)[0].item()
        if (self.batch_idx + 1) == self.num_batches:
            self.end_of_epoch_update()
            self.update_lr()
        return summary

    def update(self, terms):
        """One optimiser step on the sum of the loss terms (``{name: loss}``, each logged). ProGrad
        replaces it with its gradient projection."""
        loss = sum(terms.values())
        if self.scaler is not None:
            self.optim.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            self.model_backward_and_update(loss)

    def end_of_epoch_update(self):
        """After the last step of an epoch, before the LR steps and the checkpoint is written: PromptSRC
        aggregates its prompts here."""

    def model_inference(self, image):
        with autocast_context(self.prec, self.device):
            return self.model(image).float()


class WholeModelPromptTrainer(PromptTrainer):
    """IVLP, VPT, MaPLe, PromptSRC: prompts live inside CLIP's towers too, so the official code registers
    the whole model (a ``TrainableStateDict``: only its trained tensors are saved)."""

    def registered_module(self):
        return self.model


def load_like_coop(trainer, directory, epoch=None):
    """CoOp's ``load_model``, written against Dassl.pytorch's API only: no ``val_result`` printed; the
    registered modules themselves leave out CoOp's class-set buffers (``TrainableStateDict``)."""
    if not directory:
        print("Note that load_model() is skipped as no pretrained model is given")
        return
    model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    for name in trainer.get_model_names():
        model_path = osp.join(directory, name, model_file)
        if not osp.exists(model_path):
            raise FileNotFoundError(f'Model not found at "{model_path}"')
        checkpoint = load_checkpoint(model_path)
        print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
        trainer._models[name].load_state_dict(checkpoint["state_dict"])


def normalize(features):
    return F.normalize(features, dim=-1)


def context_size(n_ctx, ctx_init):
    """As CoOp: an initial phrase fixes the number of context tokens to its number of words."""
    return len(ctx_init.split()) if ctx_init else n_ctx


OFFICIAL_MAX_INIT_CTX = 4  # IVLP, MaPLe, PromptSRC: ``if ctx_init and n_ctx <= 4``, whatever the phrase


def check_init_phrase(ctx_init, n_ctx, key):
    """Refuse what the official IVLP, MaPLe and PromptSRC would silently corrupt: a CTX_INIT used (``n_ctx <=
    4``) with fewer than ``n_ctx`` tokens, whose last context slots would start from the end-of-text and
    padding embeddings. ``key`` names the context size in the message."""
    if not ctx_init or n_ctx > OFFICIAL_MAX_INIT_CTX:
        return
    n_tokens = len(get_tokenizer().encode(ctx_init.replace("_", " ")))
    if n_tokens < n_ctx:
        raise ValueError(f'{key} is {n_ctx} but CTX_INIT "{ctx_init}" has {n_tokens} tokens: the official code '
                         f"would start the other context slots from end-of-text/padding embeddings; use {key} <= "
                         f'{n_tokens}, a longer CTX_INIT, or CTX_INIT "" (random context)')


def init_phrase_or_none(ctx_init, n_ctx, key):
    """IVLP, MaPLe, PromptSRC: as the official code, CTX_INIT starts the context only when ``n_ctx <= 4``;
    otherwise the context is random behind "X" placeholders (said in a note)."""
    check_init_phrase(ctx_init, n_ctx, key)
    if ctx_init and n_ctx > OFFICIAL_MAX_INIT_CTX:
        print(f'Note: CTX_INIT "{ctx_init}" is not used with {key} {n_ctx} > {OFFICIAL_MAX_INIT_CTX}, as in the '
              "official code: the context starts random")
        return ""
    return ctx_init


def initial_context(class_prompts, n_ctx, ctx_dim, ctx_init, leading=()):
    """fp32 master copy of the context: CTX_INIT's token embeddings, else N(0, 0.02) as CoOp."""
    if ctx_init:
        vectors = class_prompts.ctx_init_vectors().float()
        return vectors.expand(*leading, n_ctx, ctx_dim).clone()
    return torch.randn(*leading, n_ctx, ctx_dim) * 0.02


class PromptLearner(TrainableStateDict):
    """Base of the ``prompt_learner`` modules CoOp's family registers: loads CoOp's checkpoints too."""


class CrossEntropyTraining:
    """The training loss of a model trained by cross-entropy on its own logits alone."""

    def training_loss(self, image, label):
        logits = self(image)
        return F.cross_entropy(logits, label), logits


class PromptedCLIP(CrossEntropyTraining, torch.nn.Module):
    """Frozen CLIP pieces every prompt model uses; subclasses add ``prompt_learner`` and ``forward``."""

    def __init__(self, clip_model, classnames, n_ctx, ctx_init):
        super().__init__()
        self.classnames = list(classnames)
        self.class_prompts = ClassPrompts(clip_model, self.classnames, n_ctx, ctx_init or None)
        self.random_context = not ctx_init  # what the official build draws (``official_draws.context``)
        if self.class_prompts.fixed_init_tokens:
            print(f'Note: the context starts from the first {n_ctx} tokens of "{ctx_init}"; its other '
                  f"{self.class_prompts.fixed_init_tokens} tokens stay fixed in every prompt")
        self.text_encoder = TextEncoder(clip_model)
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_dtype(clip_model)
        self.ctx_dim = clip_model.ln_final.weight.shape[0]
        self.embed_dim = clip_model.text_projection.shape[1]

    def encode_image(self, image, **visual_prompts):
        return normalize(self.image_encoder(image.type(self.dtype), **visual_prompts))

    def encode_prompts(self, prompts, eot):
        """Normalised features of assembled prompts (..., L, D); ``eot`` (...) gives each EOT slot."""
        return normalize(self.text_encoder(prompts.type(self.dtype), eot))

    def encode_instance_text(self, ctx, deep_prompts=None):
        """(B, n_ctx, D) per-image context -> (B, C, E): all B x C prompts in one (chunked) call, each
        image's ``[SOS] ctx`` run once for all its classes; ``deep_prompts`` replace the context at the
        input of layers 1 .. J-1."""
        prefix = self.class_prompts.shared_prefix(ctx.type(self.dtype))
        text = self.text_encoder.encode_shared_prefix(prefix, self.class_prompts.token_suffix,
                                                      self.class_prompts.eot, deep_prompts)
        return normalize(text)


class TemplateTextFeatures(torch.nn.Module):
    """Normalised frozen-CLIP features of hand-written prompts, computed once per class set.

    ``templates``: one template, or several whose unnormalised features are averaged per class before
    normalising (PromptSRC's textual diversity). Zero-shot CLIP, MuPL's ``TVP.TEXT frozen``, KgCoOp, ProGrad,
    VPT and PromptSRC read these every step; they depend only on the class names, so they are cached, keyed
    on the class set (and device/dtype). ``fp32``: encode with CLIP's weights in fp32 arithmetic whatever
    the run's precision, as ProGrad's and PromptSRC's own code does (a temporary fp32 copy of the text tower).
    Only the text tower is held, never the image tower, so a prompt in the image tower has one name.
    """

    def __init__(self, clip_model, templates, fp32=False, batch_size=256):
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.text_encoder = TextEncoder(clip_model)
        self.templates = [templates] if isinstance(templates, str) else list(templates)
        self.fp32 = fp32
        self.batch_size = batch_size
        self._cache = {}

    @torch.no_grad()
    def forward(self, classnames):
        weight = self.text_encoder.text_projection
        key = (tuple(classnames), weight.device, weight.dtype)
        if key not in self._cache:
            self._cache = {key: self._encode(classnames, weight.device).to(weight.dtype)}
        return self._cache[key]

    def _encode(self, classnames, device):
        token_embedding, text_encoder = self.token_embedding, self.text_encoder
        if self.fp32 and text_encoder.text_projection.dtype != torch.float32:
            token_embedding, text_encoder = copy.deepcopy(torch.nn.ModuleList([token_embedding, text_encoder])).float()
        names = [name.replace("_", " ") for name in classnames]
        total = 0
        for template in self.templates:
            tokens = clip.tokenize([template.format(name) for name in names],
                                   text_encoder.positional_embedding.shape[0]).to(device)
            with torch.autocast(device_type=device.type, enabled=False):
                total = total + torch.cat([
                    text_encoder(token_embedding(chunk), chunk.argmax(dim=-1)).float()
                    for chunk in tokens.split(self.batch_size)
                ])
        return normalize(total / len(self.templates))
