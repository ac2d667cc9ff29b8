"""FGVC-Aircraft: the official train/val/test lists instead of a split_zhou file (as CoOp)."""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY

from .base import CoOpDataset, DatasetError


@DATASET_REGISTRY.register()
class FGVCAircraft(CoOpDataset):
    """``variants.txt`` orders the 100 classes; ``images_variant_<split>.txt`` lines are
    ``<image id> <variant name>``; images are ``images/<image id>.jpg``."""

    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    config_name = "fgvc_aircraft"

    def read_data(self):
        variants = self._read_lines("variants.txt")
        labels = {name: index for index, name in enumerate(variants)}
        return tuple(self._read_split(f"images_variant_{split}.txt", labels)
                     for split in ("train", "val", "test"))

    def _read_lines(self, name):
        path = osp.join(self.dataset_dir, name)
        if not osp.isfile(path):
            raise DatasetError(f"{path} is missing: it comes with the official archive "
                               "(python -m datasets.prepare fgvc_aircraft)")
        with open(path) as handle:
            return [line.strip() for line in handle if line.strip()]

    def _read_split(self, name, labels):
        entries = []
        for line in self._read_lines(name):
            image_id, _, variant = line.partition(" ")
            if variant not in labels:
                raise DatasetError(f"{osp.join(self.dataset_dir, name)}: unknown variant {variant!r}")
            entries.append((osp.join(self.image_dir, image_id + ".jpg"), labels[variant], variant))
        return entries
