"""Write the ToyShapes benchmark: $DATA/toy_shapes/images/<class>/*.png and split_zhou_ToyShapes.json.

    python -m toyworld.make_dataset --root $DATA [--per-class 24 8 16] [--seed 0]

Deterministic for a seed. An existing dataset drawn by the same world version with the same arguments is
left as it is; any other is redrawn (``world.json`` in the folder records what drew it).
"""
import argparse
import json
import os
import os.path as osp

import numpy as np

from dassl.utils import write_json

from . import world
from .world import PATTERNS, SIZES, class_names, draw

SPLIT_FILE = "split_zhou_ToyShapes.json"
WORLD_FILE = "world.json"


def world_description(per_class, seed):
    """What decides every pixel of the dataset; written last, so it also marks a complete dataset."""
    return {"world_version": world.WORLD_VERSION, "seed": seed, "per_class": list(per_class),
            "image_size": world.IMAGE_SIZE, "fill_jitter": world.FILL_JITTER,
            "background_noise": world.BACKGROUND_NOISE, "warm_light": list(world.WARM_LIGHT)}


def read_json_or_none(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


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
    split_path, world_path = osp.join(folder, SPLIT_FILE), osp.join(folder, WORLD_FILE)
    entries = {key: [[rel, label, name] for rel, label, name, _ in items] for key, items in split.items()}
    description = world_description(per_class, seed)
    if read_json_or_none(world_path) == description and read_json_or_none(split_path) == entries:
        print(f"ToyShapes already at {folder}")
        return folder
    if osp.exists(world_path) or osp.exists(split_path):
        print(f"ToyShapes at {folder} was drawn by another world version or other arguments: redrawing")
        for path in (world_path, split_path):
            if osp.exists(path):
                os.remove(path)
    for items in split.values():
        for relpath, _, _, (shape, colour, pattern, size, image_seed) in items:
            path = osp.join(folder, "images", relpath)
            os.makedirs(osp.dirname(path), exist_ok=True)
            draw(shape, colour, pattern, size, image_seed, style="downstream").save(path)
    write_json(entries, split_path)
    write_json(description, world_path)
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
