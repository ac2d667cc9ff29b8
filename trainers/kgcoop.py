"""KgCoOp (Yao et al., CVPR 2023): CoOp whose learned class prompts stay close to a hand-written one.

Loss = CE(tau f_img w^T, y) + W * (1 - mean_c cos(w_c, w_c^clip)): w_c are the learned prompts' features,
w_c^clip frozen CLIP's features of the dataset's KgCoOp template, computed once per class set. Inference
uses the learned prompts only. docs/baselines.md lists what differs from the official code and why.
"""
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from . import coop
from .common import PromptTrainer, TemplateTextFeatures, node_with
from .official_draws import Linear, Normal, clip_construction, context
from .templates import KGCOOP_TEMPLATES, dataset_template

# The official trainer starts the context from this phrase whenever CTX_INIT is set, whatever it says.
KGCOOP_INIT = "a photo of a"
DEFAULT_WEIGHT = 8.0  # what the official scripts pass for every dataset (their yacs default is 1.0)
DEAD_WIDTH = 512  # the official unused modules' width, hard-coded whatever the CLIP


def extend_cfg(cfg):
    coop.extend_cfg(cfg)
    if "W" not in cfg.TRAINER.COOP:
        cfg.TRAINER.COOP.W = DEFAULT_WEIGHT


def knowledge_gap(text, hand_written):
    """1 - mean_c cos(w_c, w_c^clip) for normalised (C, E) features: half the paper's mean squared
    distance, as the official code computes it."""
    return 1.0 - (text.float() * hand_written.float()).sum(dim=-1).mean()


class KgCoOpPromptLearner(coop.CoOpPromptLearner):
    # Saved by the official code, never trained: a bias vector and a one-layer meta-net nothing calls.
    OFFICIAL_EXTRAS = ("bias_vectors", "meta_net.")


class KgCoOpCLIP(coop.CoOpCLIP):
    LEARNER = KgCoOpPromptLearner

    def __init__(self, coop_cfg, classnames, clip_model, dataset_name):
        if coop_cfg.CTX_INIT and coop_cfg.CTX_INIT != KGCOOP_INIT:
            print(f'Note: KgCoOp starts the context from "{KGCOOP_INIT}" whenever CTX_INIT is set, as its '
                  f'official trainer does, not from "{coop_cfg.CTX_INIT}"')
        if coop_cfg.CTX_INIT:
            coop_cfg = node_with(coop_cfg, CTX_INIT=KGCOOP_INIT)
        super().__init__(coop_cfg, classnames, clip_model)
        self.weight = coop_cfg.W
        template = dataset_template(dataset_name, KGCOOP_TEMPLATES)
        print(f'Hand-written prompt: "{template}"')
        self.hand_written = TemplateTextFeatures(clip_model, template)

    @staticmethod
    def trains(name):
        """The official selection by name."""
        return "ctx" in name

    def training_loss(self, image, label):
        text = self.class_text()
        logits = self.logit_scale.exp() * self.encode_image(image) @ text.t()
        gap = knowledge_gap(text, self.hand_written(self.classnames))
        return {"loss": F.cross_entropy(logits, label) + self.weight * gap}, logits


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    CFG_NODE = "COOP"

    @classmethod
    def validate_cfg(cls, cfg):
        super().validate_cfg(cfg)
        if cfg.TRAINER.COOP.W < 0:
            raise ValueError(f"TRAINER.COOP.W is {cfg.TRAINER.COOP.W}; KgCoOp's weight must be >= 0 "
                             f"(the official recipe uses {DEFAULT_WEIGHT})")

    def build_custom_clip(self, cfg, classnames, clip_model):
        return KgCoOpCLIP(cfg.TRAINER.COOP, classnames, clip_model, cfg.DATASET.NAME)

    def official_draws(self, clip_model):
        """kgcoop.py: its CLIP; in PromptLearner a random context, ``bias_vectors``, a second CLIP (for the
        hand-written features) and ``meta_net``; then CustomCLIP's ``Adapter``. All but the context unused."""
        width = DEAD_WIDTH
        return clip_construction(clip_model) + context(self.model) + [
            Normal((1, width), "bias_vectors"),
            *clip_construction(clip_model),
            Linear(width, width, "meta_net.linear1"),
            Linear(width, width // 4, "Adapter fc.0", bias=False),
            Linear(width // 4, width, "Adapter fc.2", bias=False),
        ]
