"""Zero-shot CLIP with CoOp's hand-written per-dataset prompt: the floor every prompt learner must beat."""
import torch

from dassl.engine import TRAINER_REGISTRY, TrainerX

from .common import (
    TemplateTextFeatures,
    autocast_context,
    cast_clip,
    check_open_clip_inputs,
    declare_trainer_node,
    effective_precision,
    load_clip_to_cpu,
    normalize,
)
from .templates import dataset_template


def extend_cfg(cfg):
    declare_trainer_node(cfg, "ZSCLIP", PREC="fp16")


class ZeroshotModel(torch.nn.Module):
    def __init__(self, clip_model, classnames, template):
        super().__init__()
        self.classnames = list(classnames)
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.class_features = TemplateTextFeatures(clip_model, template)

    @torch.no_grad()
    def forward(self, image):
        text = self.class_features(self.classnames)
        image_features = normalize(self.image_encoder(image.type(text.dtype)))
        return self.logit_scale.exp() * image_features @ text.t()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """Evaluation only (``--eval-only``); nothing is trained, registered or saved."""

    LEARNS_WEIGHTS = False

    @classmethod
    def validate_cfg(cls, cfg):
        """train.py's check before a run: an open_clip backbone's image size, mean and std."""
        check_open_clip_inputs(cfg)

    def build_model(self):
        cfg = self.cfg
        self.prec = effective_precision(cfg.TRAINER.ZSCLIP.PREC, self.device)
        clip_model = cast_clip(load_clip_to_cpu(cfg), self.prec)
        template = dataset_template(cfg.DATASET.NAME)
        print(f'Prompt template: "{template}"')
        self.model = ZeroshotModel(clip_model, self.dm.dataset.classnames, template)
        self.model.to(self.device).eval()

    def model_inference(self, image):
        with autocast_context(self.prec, self.device):
            return self.model(image).float()
