"""The CoOp benchmark loaders on fake trees in their real layouts, and CoOp's exact few-shot draw."""
import json
import random

import pytest

import plugins
from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset
from dassl.utils import set_random_seed
from datasets.base import DatasetError
from tests.fake_trees import (
    make_fake_imagenet_folders,
    make_fake_oxford_pets,
    make_split_tree,
    write_classnames,
    write_image,
    write_split,
)

MODULES = plugins.import_plugins(("datasets",))


def make_cfg(root, name, shots=-1, seed=1, subsample="all"):
    cfg = get_cfg_default()
    plugins.extend_cfg(cfg, MODULES)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return cfg


def load(root, name, shots=-1, seed=1, subsample="all"):
    set_random_seed(seed)
    return build_dataset(make_cfg(root, name, shots, seed, subsample))


def coop_fewshot(split_items, num_shots):
    """CoOp + Dassl's draw, written out from the algorithm: labels in order of first appearance,
    random.sample per class with at least K items, smaller classes kept whole without a draw."""
    by_label = {}
    for item in split_items:
        by_label.setdefault(item[1], []).append(item)
    picked = []
    for items in by_label.values():
        picked.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
    return picked


UNEVEN = [(7, 5, 2), (3, 2, 2), (9, 6, 2), (5, 1, 2), (6, 4, 2)]  # (train, val, test) per class


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fewshot_selection_equals_coops_for_each_seed(tmp_path, seed):
    names = ["persian", "pug", "beagle", "boxer", "sphynx"]
    dataset_dir = make_split_tree(tmp_path / "oxford_pets", "images", "split_zhou_OxfordPets.json", names, UNEVEN)
    split = json.loads((dataset_dir / "split_zhou_OxfordPets.json").read_text())
    random.shuffle(split["train"])  # first-appearance order is not label order
    write_split(dataset_dir / "split_zhou_OxfordPets.json", split)

    random.seed(seed)
    expected_train = coop_fewshot(split["train"], 4)
    expected_val = coop_fewshot(split["val"], min(4, 4))

    dataset = load(tmp_path, "OxfordPets", shots=4, seed=seed)
    got_train = [(str(d.impath), d.label) for d in dataset.train_x]
    assert got_train == [(str(dataset_dir / "images" / rel), label) for rel, label, _ in expected_train]
    assert [d.label for d in dataset.val] == [label for _, label, _ in expected_val]
    assert (dataset_dir / "split_fewshot" / f"mupl_shot_4-seed_{seed}.json").is_file()

    random.seed(seed + 100)  # a cache hit draws nothing, whatever the random state
    again = build_dataset(make_cfg(tmp_path, "OxfordPets", 4, seed))
    assert [d.impath for d in again.train_x] == [d.impath for d in dataset.train_x]


def test_base_and_new_halves_are_relabelled_from_zero(tmp_path):
    names = ["persian", "pug", "beagle", "boxer", "sphynx"]
    make_split_tree(tmp_path / "oxford_pets", "images", "split_zhou_OxfordPets.json", names, (3, 1, 2))
    base = load(tmp_path, "OxfordPets", subsample="base")
    new = load(tmp_path, "OxfordPets", subsample="new")
    assert base.classnames == ["persian", "pug", "beagle"]  # ceil(5 / 2) = 3 base classes
    assert new.classnames == ["boxer", "sphynx"]
    assert sorted({d.label for d in new.test}) == [0, 1]
    assert len(base.train_x) == 9 and len(new.test) == 4


def test_corrupt_fewshot_cache_is_rebuilt_with_the_same_draw(tmp_path, capsys):
    make_fake_oxford_pets(tmp_path, n_train=5)
    first = load(tmp_path, "OxfordPets", shots=2, seed=1)
    cache = tmp_path / "oxford_pets" / "split_fewshot" / "mupl_shot_2-seed_1.json"
    cache.write_text("{ not json")
    rebuilt = load(tmp_path, "OxfordPets", shots=2, seed=1)
    assert "unreadable" in capsys.readouterr().out
    assert [d.impath for d in rebuilt.train_x] == [d.impath for d in first.train_x]
    assert json.loads(cache.read_text())["train"][0][0].startswith("images/")


FINE_GRAINED = [
    ("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
    ("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    ("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json"),
    ("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    ("Food101", "food-101", "images", "split_zhou_Food101.json"),
    ("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json"),
    ("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json"),
    ("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json"),
    ("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
]


@pytest.mark.parametrize("name, folder, image_dir, split_file", FINE_GRAINED)
def test_split_file_loaders_read_their_layout(tmp_path, name, folder, image_dir, split_file):
    classes = ["class a", "class b", "class c"]
    make_split_tree(tmp_path / folder, image_dir, split_file, classes, (4, 2, 3))
    dataset = load(tmp_path, name)
    assert dataset.classnames == classes and dataset.num_classes == 3
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == (12, 6, 9)
    assert dataset.train_x[0].impath.startswith(str(tmp_path / folder / image_dir))


def test_fgvc_aircraft_reads_the_official_lists(tmp_path):
    root = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Falcon 2000"]
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    number = 1000000
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(count):
                number += 1
                write_image(root / "images" / f"{number}.jpg", label=label)
                lines.append(f"{number} {variant}")
        (root / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    dataset = load(tmp_path, "FGVCAircraft", subsample="new")
    assert dataset.classnames == ["Falcon 2000"]
    full = load(tmp_path, "FGVCAircraft")
    assert full.classnames == variants
    assert (len(full.train_x), len(full.val), len(full.test)) == (9, 6, 6)


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def test_imagenet_reads_folders_caches_the_listing_and_uses_test_as_val(tmp_path):
    root = tmp_path / "imagenet"
    write_classnames(root, WNIDS)
    make_fake_imagenet_folders(root, "images/train", list(WNIDS), 5)
    make_fake_imagenet_folders(root, "images/val", list(WNIDS), 2)
    dataset = load(tmp_path, "ImageNet", shots=2, seed=1)
    assert dataset.classnames == list(WNIDS.values())
    assert len(dataset.train_x) == 6 and len(dataset.test) == 6
    assert dataset.val == dataset.test
    assert (root / "mupl_preprocessed.json").is_file()
    assert len(load(tmp_path, "ImageNet").train_x) == 15


@pytest.mark.parametrize(
    "name, folder, image_dir, numbered",
    [("ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", True),
     ("ImageNetSketch", "imagenet-sketch", "images", False),
     ("ImageNetA", "imagenet-adversarial", "imagenet-a", False),
     ("ImageNetR", "imagenet-rendition", "imagenet-r", False)],
)
def test_imagenet_variants_are_test_only(tmp_path, name, folder, image_dir, numbered):
    root = tmp_path / folder
    write_classnames(root, WNIDS)
    present = list(WNIDS) if numbered else list(WNIDS)[1:]  # -A and -R hold a subset of classes
    names = [str(i) for i in range(len(present))] if numbered else None
    make_fake_imagenet_folders(root, image_dir, present, 2, folder_names=names)
    dataset = load(tmp_path, name)
    assert dataset.classnames == [WNIDS[w] for w in present]
    assert dataset.train_x == dataset.test and len(dataset.test) == 2 * len(present)


def test_missing_root_folder_and_split_name_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load(tmp_path / "nowhere", "OxfordPets")
    with pytest.raises(DatasetError, match=r"oxford_pets is missing.*python -m datasets.prepare oxford_pets"):
        load(tmp_path, "OxfordPets")
    (tmp_path / "oxford_pets").mkdir()
    with pytest.raises(DatasetError, match="split_zhou_OxfordPets.json is missing.*1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"):
        load(tmp_path, "OxfordPets")


@pytest.mark.parametrize(
    "content, message",
    [("not json", "not valid JSON"),
     ('{"train": []}', "must hold the keys"),
     ('{"train": [["a.jpg", 1, "b"]], "val": [], "test": []}', "labels must run 0"),
     ('{"train": [["a.jpg", 0, "b"], ["c.jpg", 0, "d"]], "val": [], "test": []}', "is both 'b' and 'd'"),
     ('{"train": [["../../etc/passwd", 0, "b"]], "val": [], "test": []}', "points outside"),
     ('{"train": [["a.jpg", "0", "b"]], "val": [], "test": []}', "is not \\[path, label, name\\]")],
)
def test_malformed_split_files_are_named_with_the_problem(tmp_path, content, message):
    (tmp_path / "oxford_pets").mkdir()
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load(tmp_path, "OxfordPets")


def test_missing_images_are_counted_and_named_before_training(tmp_path):
    dataset_dir = make_fake_oxford_pets(tmp_path)
    images = sorted((dataset_dir / "images").iterdir())
    for image in images[:3]:
        image.unlink()
    with pytest.raises(DatasetError, match=rf"3 of {len(images)} images listed .* are missing") as error:
        load(tmp_path, "OxfordPets")
    assert images[0].name in str(error.value)


def test_classes_smaller_than_k_are_kept_whole_with_a_warning(tmp_path, capsys):
    make_split_tree(tmp_path / "oxford_pets", "images", "split_zhou_OxfordPets.json", ["a", "b"],
                    [(5, 1, 1), (2, 1, 1)])
    dataset = load(tmp_path, "OxfordPets", shots=4)
    assert len(dataset.train_x) == 6
    assert "1 classes hold fewer than 4 training images" in capsys.readouterr().out
