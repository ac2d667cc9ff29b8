"""The one base every CoOp benchmark loader shares: split files, few-shot draw, cache, base/new.

A loader only says where its files are (and, for the few without a ``split_zhou_*.json``, how to read
its official lists). Everything that decides *which images* a run sees lives here, so a MuPL run and a
CoCoOp run of the same seed train on exactly the same images, the ones CoOp + Dassl would pick.
"""
import json
import math
import os.path as osp
from collections import Counter

from dassl.data.datasets import DatasetBase, Datum
from dassl.utils import write_json


def extend_cfg(cfg):
    """The base/new switch of CoCoOp's protocol: "all", "base" or "new"."""
    if "SUBSAMPLE_CLASSES" not in cfg.DATASET:
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"


class DatasetError(RuntimeError):
    """A dataset folder, split file or image that is missing or malformed; the message says the fix."""


def prepare_hint(config_name, root):
    return f"python -m datasets.prepare {config_name} --root {root or '$DATA'}"


def dataset_root(cfg):
    root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT)) if cfg.DATASET.ROOT else ""
    if not root:
        raise DatasetError("No data root given: pass --root $DATA (or set DATASET.ROOT)")
    if not osp.isdir(root):
        raise DatasetError(f"The data root {root} does not exist: create it, or pass the right --root")
    return root


def inside(folder, relpath, source):
    """``folder/relpath``, refusing paths from a split file that would leave the dataset folder."""
    path = osp.normpath(osp.join(folder, relpath))
    if osp.isabs(relpath) or not path.startswith(osp.normpath(folder) + osp.sep):
        raise DatasetError(f"{source}: the image path {relpath!r} points outside {folder}")
    return path


def check_images_exist(entries, source):
    """Count every listed image that is absent, before any training starts."""
    missing = [path for path, _, _ in entries if not osp.isfile(path)]
    if missing:
        first = "is a folder, not an image" if osp.isdir(missing[0]) else "is missing"
        raise DatasetError(
            f"{len(missing)} of {len(entries)} images listed in {source} are missing or not files (the first, "
            f"{missing[0]}, {first}): the dataset folder is incomplete; re-extract it or run the preparation "
            "command with --check"
        )


def to_datums(entries):
    return [Datum(impath=path, label=label, classname=name) for path, label, name in entries]


def read_split_file(filepath, image_dir, hint=""):
    """CoOp's ``split_zhou_*.json``: {"train"|"val"|"test": [[relpath, label, classname], ...]}."""
    if not osp.isfile(filepath):
        raise DatasetError(f"Split file {filepath} is missing. {hint}".strip())
    try:
        with open(filepath) as handle:
            split = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"Split file {filepath} is not valid JSON ({error}); download it again") from error
    if not isinstance(split, dict) or not {"train", "val", "test"} <= set(split):
        raise DatasetError(f"Split file {filepath} must hold the keys 'train', 'val' and 'test'")
    output = {}
    names = {}
    for key in ("train", "val", "test"):
        entries = []
        for item in split[key]:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], int) and isinstance(item[2], str)):
                raise DatasetError(f"Split file {filepath}: {key} entry {item!r} is not [path, label, name]")
            relpath, label, classname = item
            if names.setdefault(label, classname) != classname:
                raise DatasetError(
                    f"Split file {filepath}: label {label} is both {names[label]!r} and {classname!r}"
                )
            entries.append((inside(image_dir, relpath, filepath), label, classname))
        output[key] = entries
    labels = sorted(names)
    if labels != list(range(len(labels))):
        raise DatasetError(f"Split file {filepath}: labels must run 0..{len(labels) - 1}, got {labels[:5]}...")
    return output["train"], output["val"], output["test"]


def subsample_classes(*datasets, subsample="all"):
    """CoCoOp's protocol: sorted labels, the first ceil(n/2) are base, the rest new, relabelled from 0."""
    if subsample not in ("all", "base", "new"):
        raise DatasetError(f'DATASET.SUBSAMPLE_CLASSES must be "all", "base" or "new", got {subsample!r}')
    if subsample == "all":
        return datasets
    labels = sorted({item.label for item in datasets[0]})
    middle = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:middle] if subsample == "base" else labels[middle:]
    relabeler = {label: index for index, label in enumerate(selected)}
    return tuple(
        [Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
         for item in dataset if item.label in relabeler]
        for dataset in datasets
    )


class StaleCache(ValueError):
    """A cached few-shot draw that the split file (or the dataset's own lists) contradicts."""


def cached_shots(rows, split_items, num_shots, key, dataset_dir):
    """The split items a cached ``key`` list names, in its order. Every row must be a [relpath, int label,
    str name] of the split's ``key`` list, listed once, and each class of that list must have exactly
    min(num_shots, its size) rows, as the draw gives; otherwise StaleCache says what disagrees."""
    if not isinstance(rows, list):
        raise StaleCache(f"it has no {key!r} list")
    by_path = {item.impath: item for item in split_items}
    chosen, seen = [], set()
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                and type(row[1]) is int and isinstance(row[2], str)):
            raise StaleCache(f"{key} entry {row!r} is not [path, int label, class name]")
        path = osp.normpath(osp.join(dataset_dir, row[0]))
        item = by_path.get(path)
        if item is None or (item.label, item.classname) != (row[1], row[2]):
            raise StaleCache(f"{key} entry {row!r} is not in the split's {key} list with that label and name")
        if path in seen:
            raise StaleCache(f"{key} entry {row!r} is listed twice")
        seen.add(path)
        chosen.append(item)
    drawn = Counter(item.label for item in chosen)
    for label, items in DatasetBase.split_dataset_by_label(split_items).items():
        expected = min(num_shots, len(items))
        if drawn[label] != expected:
            raise StaleCache(f"class {label} ({items[0].classname}) has {drawn[label]} {key} entries, "
                             f"the split gives {expected}")
    return chosen


class CoOpDataset(DatasetBase):
    """Reads ``ROOT/<dataset_dir>``; subclasses set the class attributes and, if needed, ``read_data``."""

    dataset_dir = ""          # folder under DATASET.ROOT
    image_dir = "images"      # split paths are relative to this folder (inside dataset_dir)
    split_file = ""           # split_zhou_*.json inside dataset_dir; "" when read_data is overridden
    split_source = ""         # where the split file comes from, for the error message
    config_name = ""          # configs/datasets/<config_name>.yaml, for the preparation hint
    has_val = True            # ImageNet has no validation split: val is test

    def __init__(self, cfg):
        root = dataset_root(cfg)
        self.dataset_dir = osp.join(root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, type(self).image_dir)
        if not osp.isdir(self.dataset_dir):
            raise DatasetError(
                f"Dataset folder {self.dataset_dir} is missing. Prepare it with: "
                f"{prepare_hint(self.config_name, cfg.DATASET.ROOT)} (see docs/datasets.md)"
            )
        train, val, test = self.read_data()
        check_images_exist(train + val + test, self.dataset_dir)
        train, val, test = to_datums(train), to_datums(val), to_datums(test)
        if not self.has_val:
            val = test
        if cfg.DATASET.NUM_SHOTS >= 1:
            train, fewshot_val = self.fewshot_splits(train, val, cfg.DATASET.NUM_SHOTS, cfg.SEED)
            if self.has_val:
                val = fewshot_val
        self.check_every_class_trains(train, test)
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def read_data(self):
        """(train, val, test) lists of (absolute path, label, classname)."""
        hint = f"Download it into {self.dataset_dir} ({self.split_source})." if self.split_source else ""
        return read_split_file(osp.join(self.dataset_dir, self.split_file), self.image_dir, hint)

    # --- few-shot ----------------------------------------------------------------------------------
    def fewshot_cache_path(self, num_shots, seed):
        return osp.join(self.dataset_dir, "split_fewshot", f"mupl_shot_{num_shots}-seed_{seed}.json")

    def fewshot_splits(self, train, val, num_shots, seed):
        """CoOp's order: draw training shots for every class, then min(K, 4) validation shots. A cached
        draw is used only when it agrees with the split; checking it draws nothing, so a redraw after a
        stale cache picks what a run without a cache picks."""
        cache = self.fewshot_cache_path(num_shots, seed)
        cached = self.read_fewshot_cache(cache, train, val, num_shots)
        if cached is not None:
            print(f"Loading preprocessed few-shot data from {cache}")
            return cached
        self.warn_small_classes(train, num_shots)
        train = self.generate_fewshot_dataset(train, num_shots=num_shots)
        if self.has_val:
            val = self.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        self.check_no_empty_class(train)
        print(f"Saving preprocessed few-shot data to {cache}")
        write_json({"train": self.to_relative(train), "val": self.to_relative(val) if self.has_val else []},
                   cache)
        return train, val

    def warn_small_classes(self, train, num_shots):
        small = [items[0].classname for items in self.split_dataset_by_label(train).values()
                 if len(items) < num_shots]
        if small:
            print(f"Warning: {len(small)} classes hold fewer than {num_shots} training images and are "
                  f"kept whole, as in CoOp: {', '.join(small[:10])}")

    def check_no_empty_class(self, train):
        if not train:
            raise DatasetError(f"The few-shot training set of {self.dataset_dir} is empty")

    def check_every_class_trains(self, train, test):
        """A class with test images but no training image would silently shift every label after it."""
        trained = {item.label for item in train}
        empty = sorted({(item.label, item.classname) for item in test if item.label not in trained})
        if empty:
            names = ", ".join(f"{label} ({name})" for label, name in empty[:5])
            raise DatasetError(f"{len(empty)} classes of {self.dataset_dir} have no training image: {names}")

    def to_relative(self, items):
        return [[osp.relpath(item.impath, self.dataset_dir), item.label, item.classname] for item in items]

    def read_fewshot_cache(self, path, train, val, num_shots):
        """The cached draw as the split's own items, or None (with a warning) when it is absent,
        unreadable or disagrees with the split: the split and the images on disk are the truth."""
        if not osp.isfile(path):
            return None
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            print(f"Warning: few-shot cache {path} is unreadable ({error}); drawing the shots again")
            return None
        parts = {"train": (train, num_shots), "val": (val if self.has_val else [], min(num_shots, 4))}
        try:
            if not isinstance(data, dict):
                raise StaleCache("it is not an object with 'train' and 'val' lists")
            drawn = {key: cached_shots(data.get(key), items, shots, key, self.dataset_dir)
                     for key, (items, shots) in parts.items()}
        except StaleCache as disagreement:
            print(f"Warning: few-shot cache {path} disagrees with the split ({disagreement}); "
                  "drawing the shots again")
            return None
        self.check_no_empty_class(drawn["train"])
        return drawn["train"], drawn["val"]

