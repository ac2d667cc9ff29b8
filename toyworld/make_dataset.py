"""Write the ToyShapes benchmark: $DATA/toy_shapes/images/<class>/*.png and split_zhou_ToyShapes.json.

    python -m toyworld.make_dataset --root $DATA [--per-class 24 8 16] [--seed 0]

Deterministic for a seed; an existing, complete dataset is left as it is.
"""
import argparse
import json
import os
import os.path as osp

import numpy as np

from dassl.utils import write_json

from .world import PATTERNS, SIZES, class_names, draw

SPLIT_FILE = "split_zhou_ToyShapes.json"


def build_split(per_class, seed):
    """[(relpath, label, classname, draw arguments)] per split, decided before any pixel is drawn."""
    rng = np.random.default_rng(seed)
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(class_names()):
        colour, shape = name.split(" ")
        for key, count in zip(("train", "val", "test"), per_class):
            for index in range(count):
                pattern = PATTERNS[rng.integers(len(PATTERNS))]
                size = SIZES[rng.integers(len(SIZES))]
                image_seed = int(rng.integers(2 ** 31))
                relpath = f"{name.replace(' ', '_')}/{key}_{index:03d}.png"
                split[key].append((relpath, label, name, (shape, colour, pattern, size, image_seed)))
    return split


def make_dataset(root, per_class=(24, 8, 16), seed=0):
    folder = osp.join(root, "toy_shapes")
    split = build_split(per_class, seed)
    split_path = osp.join(folder, SPLIT_FILE)
    entries = {key: [[rel, label, name] for rel, label, name, _ in items] for key, items in split.items()}
    if osp.isfile(split_path):
        with open(split_path) as handle:
            if json.load(handle) == entries:
                print(f"ToyShapes already at {folder}")
                return folder
    for items in split.values():
        for relpath, _, _, (shape, colour, pattern, size, image_seed) in items:
            path = osp.join(folder, "images", relpath)
            os.makedirs(osp.dirname(path), exist_ok=True)
            draw(shape, colour, pattern, size, image_seed, style="downstream").save(path)
    write_json(entries, split_path)
    total = sum(len(v) for v in split.values())
    print(f"ToyShapes: {len(class_names())} classes, {total} images written to {folder}")
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("DATA", "./data"))
    parser.add_argument("--per-class", type=int, nargs=3, default=[24, 8, 16], metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_dataset(args.root, tuple(args.per_class), args.seed)


if __name__ == "__main__":
    main()
