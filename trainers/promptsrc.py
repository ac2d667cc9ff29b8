"""PromptSRC (Khattak et al., ICCV 2023): IVLP's prompts, regularised by the frozen model itself.

Training adds to cross-entropy three self-regularising terms against zero-shot CLIP on the same batch:
L1 between the prompted and the hand-written (60-template) text features, L1 between the prompted and the
plain image features, and KL(zero-shot || prompted) over the logits. After training, the deployed prompts
are the Gaussian-weighted average of the prompts at each epoch's end (``prompt_averaging``).
"""
import math
import reprlib

import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from .common import TemplateTextFeatures, declare_trainer_node
from .ivlp import IVLP, IndependentPromptsCLIP
from .official_draws import clip_construction
from .prompt_averaging import GaussianPromptAverage, gaussian_epoch_weights
from .templates import PROMPTSRC_TEMPLATES


def extend_cfg(cfg):
    declare_trainer_node(cfg, "PROMPTSRC", N_CTX_VISION=4, N_CTX_TEXT=4, CTX_INIT="a photo of a", PREC="fp16",
                         PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9, TEXT_LOSS_WEIGHT=25, IMAGE_LOSS_WEIGHT=10,
                         GPA_MEAN=15, GPA_STD=1)


def finite(value):
    """``math.isfinite`` that also says False for an int too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def kl_to_zero_shot(logits, zero_shot_logits):
    """KL(softmax(zero-shot) || softmax(prompted)), summed over images and classes, divided by their
    number (as the official code divides by ``logits.numel()``)."""
    target = F.log_softmax(zero_shot_logits.float(), dim=-1)
    return (target.exp() * (target - F.log_softmax(logits.float(), dim=-1))).sum() / logits.numel()


class PromptSRCCLIP(IndependentPromptsCLIP):
    OFFICIAL_EXTRAS = ("prompt_learner.ZS_image_encoder.",)  # the official second, frozen image tower

    def __init__(self, node, classnames, clip_model):
        super().__init__(node, classnames, clip_model, method="PromptSRC")
        self.text_weight, self.image_weight = node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT
        self.zero_shot_text = TemplateTextFeatures(clip_model, PROMPTSRC_TEMPLATES, fp32=True)

    def training_loss(self, image, label):
        scale = self.logit_scale.exp()
        text, image_features = self.class_text(), self.prompted_image(image)
        logits = scale * image_features @ text.t()
        with torch.no_grad():
            zero_shot_image = self.encode_image(image)
            zero_shot_text = self.zero_shot_text(self.classnames)
            zero_shot_logits = scale * zero_shot_image @ zero_shot_text.t()
        terms = {
            "loss_ce": F.cross_entropy(logits, label),
            "loss_text": self.text_weight * F.l1_loss(text.float(), zero_shot_text.float()),
            "loss_image": self.image_weight * F.l1_loss(image_features.float(), zero_shot_image.float()),
            "loss_kl": kl_to_zero_shot(logits, zero_shot_logits),
        }
        return terms, logits


@TRAINER_REGISTRY.register()
class PromptSRC(IVLP):
    CFG_NODE = "PROMPTSRC"

    @classmethod
    def validate_cfg(cls, cfg):
        super().validate_cfg(cfg)
        node = cfg.TRAINER.PROMPTSRC
        for key in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT"):
            if not (finite(node[key]) and node[key] >= 0):
                raise ValueError(f"TRAINER.PROMPTSRC.{key} is {reprlib.repr(node[key])}; the weight of a "
                                 "regularising loss must be a finite number >= 0 (the official recipe: text 25, "
                                 "image 10)")
        if not (finite(node.GPA_STD) and node.GPA_STD > 0):
            raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD is {node.GPA_STD}; use a positive standard deviation")
        if cfg.OPTIM.MAX_EPOCH >= 1:  # the Gaussian must put weight on the epochs trained
            try:
                weights = gaussian_epoch_weights(cfg.OPTIM.MAX_EPOCH, node.GPA_MEAN, node.GPA_STD)
            except (ValueError, OverflowError):
                weights = [math.nan]
            if not all(map(finite, weights)):
                raise ValueError(
                    f"TRAINER.PROMPTSRC.GPA_MEAN is {reprlib.repr(node.GPA_MEAN)}: with GPA_STD {node.GPA_STD} it "
                    f"puts no weight on epochs 1 .. {cfg.OPTIM.MAX_EPOCH} (OPTIM.MAX_EPOCH); choose a mean near "
                    "them (the official recipe: 15 of 20 epochs) or a wider GPA_STD"
                )

    def build_custom_clip(self, cfg, classnames, clip_model):
        node = cfg.TRAINER.PROMPTSRC
        self.prompt_average = GaussianPromptAverage(cfg.OPTIM.MAX_EPOCH, node.GPA_MEAN, node.GPA_STD)
        return PromptSRCCLIP(node, classnames, clip_model)

    def official_draws(self, clip_model):
        """promptsrc.py: IVLP's, then in VLPromptLearner two more plain CLIPs (zero-shot text and image)."""
        return super().official_draws(clip_model) + clip_construction(clip_model) + clip_construction(clip_model)

    def end_of_epoch_update(self):
        """GPA: add this epoch's prompts; after the last epoch, deploy the average (before the checkpoint
        of that epoch is written, so it holds the average too)."""
        module = self._models[self.MODEL_NAME]
        average = self.prompt_average.add(self.epoch, module.state_dict())
        if average is not None:
            module.load_state_dict(average)

    def trainer_state(self):
        return self.prompt_average.state_dict()

    def load_trainer_state(self, state):
        self.prompt_average.load_state_dict(state)
