"""A trainer written only against the Dassl.pytorch API, plus a tiny image dataset, for engine tests.

Loaded through $MUPL_EXTRA_PLUGINS=fixture_plugins.linear_probe with tests/ on PYTHONPATH. Set
$LINEAR_PROBE_SIGTERM_AT=<global iteration> to make the trainer signal itself, as a scheduler would,
$LINEAR_PROBE_SIGNAL_IN_TEST=<signal number> to have it signal itself at the first evaluation batch, and
$LINEAR_PROBE_WAIT_FOR=<file> to hold its first training step until that file exists (it creates
<file>.waiting when it starts to wait).
"""
import os
import os.path as osp
import signal
import time

import torch.nn.functional as F
from torch import nn

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import listdir_nohidden


@DATASET_REGISTRY.register()
class TinyFolders(DatasetBase):
    """``ROOT/tiny_folders/{train,test}/<class>/*.png``: the first folder level is the split."""

    dataset_dir = "tiny_folders"

    def __init__(self, cfg):
        root = osp.join(cfg.DATASET.ROOT, self.dataset_dir)
        train = self.read_split(osp.join(root, "train"))
        test = self.read_split(osp.join(root, "test"))
        train = self.generate_fewshot_dataset(train, num_shots=cfg.DATASET.NUM_SHOTS)
        super().__init__(train_x=train, val=test, test=test)

    @staticmethod
    def read_split(folder):
        items = []
        for label, classname in enumerate(listdir_nohidden(folder, sort=True)):
            for name in listdir_nohidden(osp.join(folder, classname), sort=True):
                items.append(Datum(osp.join(folder, classname, name), label, 0, classname))
        return items


@TRAINER_REGISTRY.register()
class LinearProbe(TrainerX):
    def build_model(self):
        size = self.cfg.INPUT.SIZE
        self.model = nn.Linear(3 * size[0] * size[1], self.num_classes).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("linear", self.model, self.optim, self.sched)
        self.sigterm_at = int(os.environ.get("LINEAR_PROBE_SIGTERM_AT", "-1"))
        self.signal_in_test = int(os.environ.get("LINEAR_PROBE_SIGNAL_IN_TEST", "0"))
        self.wait_for = os.environ.get("LINEAR_PROBE_WAIT_FOR", "")

    def forward_backward(self, batch):
        if self.wait_for and not osp.exists(self.wait_for):
            open(self.wait_for + ".waiting", "w").close()
            while not osp.exists(self.wait_for):
                time.sleep(0.05)
        image, label, _ = self.parse_batch_train(batch)
        output = self.model(image.flatten(1))
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        if self.epoch * self.num_batches + self.batch_idx == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}

    def model_inference(self, image):
        if self.signal_in_test:
            os.kill(os.getpid(), self.signal_in_test)
        return self.model(image.flatten(1))
