"""ProGrad (Zhu et al., ICCV 2023): CoOp updated only along directions that do not contradict zero-shot CLIP.

Two losses on the same batch: xe_loss = CE(student logits, y) and kl_loss = the soft cross-entropy to
zero-shot CLIP's logits (the teacher: its hand-written ProGrad prompt per class, temperature LOSS.T). The
step follows the gradient of xe_loss, G_d, with the part that opposes the gradient of kl_loss, G_g,
removed: G = G_d - LAMBDA <G_d, G_g> / ||G_g||^2 G_g where <G_d, G_g> < 0, else G_d. kl_loss itself never
enters the step. docs/baselines.md lists what differs from the official code and why.
"""
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY

from . import coop
from .common import PromptTrainer, TemplateTextFeatures, node_with
from .official_draws import clip_construction, context
from .templates import PROGRAD_TEMPLATES, dataset_template

LOSS_NAME = "prograd"


def extend_cfg(cfg):
    """TRAINER.COOP (CoOp's keys) and the official repository's top-level LOSS node."""
    coop.extend_cfg(cfg)
    if "LOSS" not in cfg:
        cfg.LOSS = CN({"GM": False, "NAME": "", "ALPHA": 0.0, "T": 1.0, "LAMBDA": 1.0})


def init_phrase(dataset_name):
    """The dataset's ProGrad template without " {}.": the words the context starts from."""
    return dataset_template(dataset_name, PROGRAD_TEMPLATES).replace(" {}.", "")


def init_prompt(phrase, n_ctx):
    """ "X .. X <phrase>": as many words as context slots, the phrase's words in the last ones."""
    return " ".join(["X"] * (n_ctx - len(phrase.split())) + [phrase])


def distillation_loss(student, teacher, temperature):
    """mean_b sum_c -softmax(teacher / T) log softmax(student / T) * T^2: KL(teacher || student) up to the
    teacher's entropy, a constant, so the same gradient."""
    target = F.softmax(teacher.float() / temperature, dim=-1)
    return F.cross_entropy(student.float() / temperature, target) * temperature**2


def project_gradient(domain, general, strength):
    """ProGrad's rule for one tensor: where the domain gradient G_d opposes the general one G_g, remove
    ``strength`` times its component along G_g; otherwise G_d unchanged (also when G_g is zero)."""
    dot = torch.dot(domain.flatten(), general.flatten())
    if dot >= 0:
        return domain
    return domain - strength * dot / general.pow(2).sum() * general


class ProGradCLIP(coop.CoOpCLIP):
    def __init__(self, coop_cfg, classnames, clip_model, dataset_name, temperature):
        phrase = init_phrase(dataset_name)
        n_zero = coop_cfg.N_CTX - len(phrase.split())
        if coop_cfg.CTX_INIT:  # the official CTX_INIT is a switch: any phrase means the dataset's template
            coop_cfg = node_with(coop_cfg, CTX_INIT=init_prompt(phrase, coop_cfg.N_CTX))
            print(f'Initial context: "{coop_cfg.CTX_INIT}" (the "X" slots start at zero, as ProGrad\'s do)')
        super().__init__(coop_cfg, classnames, clip_model)
        if coop_cfg.CTX_INIT:
            with torch.no_grad():
                self.prompt_learner.ctx[:n_zero] = 0
        self.temperature = temperature
        self.teacher_text = TemplateTextFeatures(clip_model, dataset_template(dataset_name, PROGRAD_TEMPLATES),
                                                 fp32=True)

    def training_loss(self, image, label):
        """xe_loss and kl_loss. The teacher's image features are the student's own: ProGrad's student
        image encoder is zero-shot CLIP's, unprompted and frozen."""
        image_features = self.encode_image(image)
        scale = self.logit_scale.exp()
        logits = scale * image_features @ self.class_text().t()
        with torch.no_grad():
            teacher = scale * image_features @ self.teacher_text(self.classnames).t()
        terms = {"xe_loss": F.cross_entropy(logits, label),
                 "kl_loss": distillation_loss(logits, teacher, self.temperature)}
        return terms, logits


@TRAINER_REGISTRY.register()
class ProGrad(PromptTrainer):
    CFG_NODE = "COOP"

    @classmethod
    def validate_cfg(cls, cfg):
        super().validate_cfg(cfg)
        loss = cfg.LOSS
        if loss.NAME != LOSS_NAME:
            raise ValueError(f"LOSS.NAME is {loss.NAME!r}; the ProGrad trainer runs only {LOSS_NAME!r} (the "
                             "official code's 'kd' and 'vertical_grad' variants are not implemented)")
        if loss.T <= 0:
            raise ValueError(f"LOSS.T is {loss.T}; the distillation temperature must be > 0 (official: 1.0)")
        if loss.LAMBDA < 0:
            raise ValueError(f"LOSS.LAMBDA is {loss.LAMBDA}; the projection strength must be >= 0 (official: 1.0)")
        phrase = init_phrase(cfg.DATASET.NAME)
        n_ctx = cfg.TRAINER.COOP.N_CTX
        if cfg.TRAINER.COOP.CTX_INIT and n_ctx < len(phrase.split()):
            raise ValueError(f"TRAINER.COOP.N_CTX is {n_ctx}; ProGrad starts the context from the "
                             f"{len(phrase.split())} words of \"{phrase}\" ({cfg.DATASET.NAME}'s template): "
                             "N_CTX must be at least that (the recipe uses 16), or CTX_INIT empty")

    def build_custom_clip(self, cfg, classnames, clip_model):
        return ProGradCLIP(cfg.TRAINER.COOP, classnames, clip_model, cfg.DATASET.NAME, cfg.LOSS.T)

    def official_draws(self, clip_model):
        """prograd.py: its CLIP, the zero-shot teacher's CLIP, then a random context."""
        return clip_construction(clip_model) + clip_construction(clip_model) + context(self.model)

    def update(self, terms):
        """Backward kl_loss -> G_g, backward xe_loss -> G_d, project each trained tensor's G_d, step. With a
        loss scaler (amp on the GPU) both losses carry the same scale, which the projection keeps, so the
        scaler unscales and skips non-finite steps as usual."""
        names = self.get_model_names()
        scale = self.scaler.scale if self.scaler is not None else (lambda loss: loss)
        params = [p for name in names for p in self._models[name].parameters() if p.requires_grad]
        self.model_zero_grad(names)
        self.detect_anomaly(terms["kl_loss"])
        scale(terms["kl_loss"]).backward(retain_graph=True)
        general = [p.grad.clone() if p.grad is not None else None for p in params]
        self.model_zero_grad(names)
        self.detect_anomaly(terms["xe_loss"])
        scale(terms["xe_loss"]).backward()
        for param, general_grad in zip(params, general):
            if param.grad is not None and general_grad is not None:
                param.grad = project_gradient(param.grad, general_grad, self.cfg.LOSS.LAMBDA)
        if self.scaler is None:
            self.model_update(names)
            return
        for name in names:
            self.scaler.step(self._optims[name])
        self.scaler.update()
