"""Small fake dataset trees in the real on-disk layouts of the CoOp benchmarks, for tests."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

PET_BREEDS = ["Abyssinian", "american_bulldog", "Bengal", "great_pyrenees", "pug", "Sphynx"]


def write_image(path, size=8, seed=0, label=0):
    """A tiny image whose colour depends on its label, so a model has something to learn."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, (size, size, 3)) + (np.array([40, 90, 140]) * (label + 1)) % 170
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    return path


def write_split(path, split):
    Path(path).write_text(json.dumps(split))


def make_split_tree(dataset_dir, image_dir, split_file, classnames, counts, size=8, per_class_dirs=True):
    """Images under ``image_dir`` and a split_zhou-style JSON with paths relative to it.

    ``counts`` is (n_train, n_val, n_test), or a list of such tuples, one per class (uneven classes).
    """
    dataset_dir = Path(dataset_dir)
    base = dataset_dir / image_dir
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classnames):
        per_class = counts[label] if isinstance(counts, list) else counts
        for key, count in zip(("train", "val", "test"), per_class):
            for index in range(count):
                folder = name.replace(" ", "_")
                rel = f"{folder}/{key}_{index}.jpg" if per_class_dirs else f"{folder}_{key}_{index}.jpg"
                seed = label * 1000 + ("train", "val", "test").index(key) * 100 + index
                write_image(base / rel, size, seed=seed, label=label)
                split[key].append([rel, label, name])
    if split_file:
        write_split(dataset_dir / split_file, split)
    return dataset_dir


def make_fake_oxford_pets(root, n_classes=4, n_train=6, n_val=3, n_test=3, size=32, seed=0):
    """$root/oxford_pets with images/<Breed>_<n>.jpg, annotations/ and split_zhou_OxfordPets.json."""
    dataset_dir = Path(root) / "oxford_pets"
    breeds = PET_BREEDS[:n_classes]
    split = {"train": [], "val": [], "test": []}
    annotations = {"trainval": [], "test": []}
    number = 0
    for label, breed in enumerate(breeds):
        for key, count in (("train", n_train), ("val", n_val), ("test", n_test)):
            for _ in range(count):
                number += 1
                name = f"{breed}_{number}.jpg"
                write_image(dataset_dir / "images" / name, size, seed=seed * 1000 + number, label=label)
                split[key].append([name, label, breed.lower().replace("_", " ")])
                species = 1 if breed[0].isupper() else 2
                annotations["test" if key == "test" else "trainval"].append(
                    f"{name[:-4]} {label + 1} {species} 1")
    (dataset_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for key, lines in annotations.items():
        (dataset_dir / "annotations" / f"{key}.txt").write_text("\n".join(lines) + "\n")
    write_split(dataset_dir / "split_zhou_OxfordPets.json", split)
    return dataset_dir


def make_fake_imagenet_folders(dataset_dir, image_dir, wnids, per_class, size=8, folder_names=None):
    """One folder per class (named by wnid, or by ``folder_names``) of tiny images."""
    dataset_dir = Path(dataset_dir)
    for label, wnid in enumerate(wnids):
        folder = folder_names[label] if folder_names else wnid
        for index in range(per_class):
            write_image(dataset_dir / image_dir / folder / f"{index}.jpeg", size, seed=label * 100 + index,
                        label=label)
    return dataset_dir


def write_classnames(dataset_dir, classnames):
    Path(dataset_dir).mkdir(parents=True, exist_ok=True)
    lines = [f"{wnid} {name}" for wnid, name in classnames.items()]
    (Path(dataset_dir) / "classnames.txt").write_text("\n".join(lines) + "\n")
