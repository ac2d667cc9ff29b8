"""ImageNet and its four test-only variants; class names come from CoOp's ``classnames.txt``.

Each line of ``classnames.txt`` is ``<wnid> <class name>``, in ImageNet's label order.
"""
import json
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase
from dassl.utils import listdir_nohidden, write_json

from .base import CoOpDataset, DatasetError, check_images_exist, dataset_root, to_datums
from .sources import SOURCES


def read_classnames(path):
    if not osp.isfile(path):
        drive_id = SOURCES["imagenet"]["drive"][0][0]
        raise DatasetError(f"{path} is missing: it is on Google Drive, id {drive_id} "
                           "(python -m datasets.prepare imagenet fetches it)")
    classnames = {}
    with open(path) as handle:
        for line in handle:
            wnid, _, name = line.strip().partition(" ")
            if wnid:
                classnames[wnid] = name
    return classnames


def folder_entries(folder, label, classname):
    return [(osp.join(folder, name), label, classname) for name in listdir_nohidden(folder, sort=True)]


def require_dir(path, config_name):
    if not osp.isdir(path):
        raise DatasetError(f"{path} is missing; see `python -m datasets.prepare {config_name}` and "
                           "docs/datasets.md for the expected layout")


@DATASET_REGISTRY.register()
class ImageNet(CoOpDataset):
    """images/train/<wnid>/ and images/val/<wnid>/; no validation split (val is test), as CoOp."""

    dataset_dir = "imagenet"
    image_dir = "images"
    config_name = "imagenet"
    has_val = False
    listing_cache = "mupl_preprocessed.json"

    def read_data(self):
        cache = osp.join(self.dataset_dir, self.listing_cache)
        if osp.isfile(cache):
            try:
                with open(cache) as handle:
                    data = json.load(handle)
                return self._absolute(data["train"]), [], self._absolute(data["test"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                print(f"Warning: {cache} is unreadable ({error}); listing the folders again")
        classnames = read_classnames(osp.join(self.dataset_dir, "classnames.txt"))
        train = self._read_folder("train", classnames)
        test = self._read_folder("val", classnames)
        write_json({"train": self._relative(train), "test": self._relative(test)}, cache)
        return train, [], test

    def _read_folder(self, split, classnames):
        split_dir = osp.join(self.image_dir, split)
        require_dir(split_dir, self.config_name)
        entries = []
        for label, wnid in enumerate(listdir_nohidden(split_dir, sort=True)):
            if wnid not in classnames:
                raise DatasetError(f"{split_dir}/{wnid} is not a class of classnames.txt")
            entries += folder_entries(osp.join(split_dir, wnid), label, classnames[wnid])
        return entries

    def _relative(self, entries):
        return [[osp.relpath(path, self.dataset_dir), label, name] for path, label, name in entries]

    def _absolute(self, rows):
        return [(osp.join(self.dataset_dir, rel), label, name) for rel, label, name in rows]


class ImageNetVariant(DatasetBase):
    """A test-only ImageNet: train_x and test are the same images (nothing is trained on them)."""

    image_dir = "images"
    config_name = ""

    def __init__(self, cfg):
        self.dataset_dir = osp.join(dataset_root(cfg), type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, type(self).image_dir)
        require_dir(self.image_dir, self.config_name)
        classnames = read_classnames(osp.join(self.dataset_dir, "classnames.txt"))
        entries = self.read_entries(classnames)
        check_images_exist(entries, self.dataset_dir)
        data = to_datums(entries)
        super().__init__(train_x=data, test=data)

    def read_entries(self, classnames):
        """Folders named by wnid; labels follow the sorted folder list."""
        entries = []
        folders = [f for f in listdir_nohidden(self.image_dir, sort=True) if osp.isdir(osp.join(self.image_dir, f))]
        for label, wnid in enumerate(folders):
            if wnid not in classnames:
                raise DatasetError(f"{self.image_dir}/{wnid} is not a class of classnames.txt")
            entries += folder_entries(osp.join(self.image_dir, wnid), label, classnames[wnid])
        return entries


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    """imagenetv2-matched-frequency-format-val/<0..999>/: folder i is ImageNet label i."""

    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"
    config_name = "imagenetv2"

    def read_entries(self, classnames):
        names = list(classnames.values())
        entries = []
        for label, name in enumerate(names):
            folder = osp.join(self.image_dir, str(label))
            require_dir(folder, self.config_name)
            entries += folder_entries(folder, label, name)
        return entries


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    dataset_dir = "imagenet-sketch"
    image_dir = "images"
    config_name = "imagenet_sketch"


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    """200 of the 1000 classes; labels index the sorted folders present."""

    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
    config_name = "imagenet_a"


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
    config_name = "imagenet_r"
