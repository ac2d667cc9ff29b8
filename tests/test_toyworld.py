"""The demo's toy world: deterministic pixels and captions, a consistent ToyShapes split, reproducible
tiny-CLIP pretraining in OpenAI's layout."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import clip
from datasets.toy_shapes import ToyShapes
from dassl.config import get_cfg_default
from tools import pretrain_tiny_clip
from toyworld import make_dataset
from toyworld.world import caption, class_names, draw, random_object

PER_CLASS = (3, 1, 2)


def tree_digest(folder):
    """{relative path: sha256} of every file under ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    make_dataset.make_dataset(str(root), PER_CLASS, seed=0)
    return root


def test_same_seed_same_pixels_and_captions():
    first = np.asarray(draw("cross", "red", "striped", "large", seed=7, style="downstream"))
    again = np.asarray(draw("cross", "red", "striped", "large", seed=7, style="downstream"))
    other = np.asarray(draw("cross", "red", "striped", "large", seed=8, style="downstream"))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == (32, 32, 3)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    objects = [random_object(rng_a) for _ in range(20)]
    assert objects == [random_object(rng_b) for _ in range(20)]
    texts = [caption(*obj, rng_a) for obj in objects]
    assert texts == [caption(*obj, rng_b) for obj in objects]
    assert all(obj[1] in text and obj[0] in text for obj, text in zip(objects, texts))


def test_styles_differ_so_transfer_is_not_free():
    """The downstream background is never the plain grey of pretraining."""
    pretrain = np.asarray(draw("circle", "blue", "plain", "small", seed=1, style="pretrain")).astype(int)
    downstream = np.asarray(draw("circle", "blue", "plain", "small", seed=1, style="downstream")).astype(int)
    corner = (slice(0, 4), slice(0, 4))
    assert np.ptp(pretrain[corner]) == 0
    assert np.ptp(downstream[corner]) > 0


def test_downstream_light_is_warm():
    """The shift zero-shot trips on: downstream images are redder and less blue than pretraining's."""
    def mean_rgb(style):
        return np.mean([np.asarray(draw("square", "green", "plain", "small", seed=s, style=style)).reshape(-1, 3)
                        for s in range(20)], axis=(0, 1))
    pretrain, downstream = mean_rgb("pretrain"), mean_rgb("downstream")
    assert abs(pretrain[0] - pretrain[2]) < 5
    assert downstream[0] - downstream[2] > 40


def test_dataset_is_byte_identical_for_a_seed(toy_root, tmp_path):
    make_dataset.make_dataset(str(tmp_path), PER_CLASS, seed=0)
    assert tree_digest(tmp_path / "toy_shapes") == tree_digest(toy_root / "toy_shapes")
    other = tmp_path / "other"
    make_dataset.make_dataset(str(other), PER_CLASS, seed=1)
    assert tree_digest(other / "toy_shapes") != tree_digest(toy_root / "toy_shapes")


def test_split_file_is_consistent(toy_root):
    folder = toy_root / "toy_shapes"
    split = json.loads((folder / make_dataset.SPLIT_FILE).read_text())
    names = class_names()
    assert len(names) == 30 and len(set(names)) == 30
    seen = set()
    for key, count in zip(("train", "val", "test"), PER_CLASS):
        assert len(split[key]) == count * len(names)
        for relpath, label, classname in split[key]:
            assert names[label] == classname
            assert relpath.startswith(classname.replace(" ", "_") + "/")
            assert (folder / "images" / relpath).is_file()
            assert relpath not in seen
            seen.add(relpath)
    assert seen == {str(p.relative_to(folder / "images")) for p in (folder / "images").rglob("*.png")}


def test_rerun_leaves_a_complete_dataset_alone(toy_root, capsys):
    before = tree_digest(toy_root)
    make_dataset.make_dataset(str(toy_root), PER_CLASS, seed=0)
    assert "already" in capsys.readouterr().out
    assert tree_digest(toy_root) == before


def test_toyshapes_loads_like_a_benchmark_with_base_and_new_halves(toy_root):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(toy_root)
    cfg.DATASET.SUBSAMPLE_CLASSES = "base"
    cfg.DATASET.NUM_SHOTS = 2
    base = ToyShapes(cfg)
    assert base.classnames == class_names()[:15]
    assert len(base.train_x) == 2 * 15 and len(base.test) == PER_CLASS[2] * 15
    cfg.DATASET.SUBSAMPLE_CLASSES = "new"
    new = ToyShapes(cfg)
    assert new.classnames == class_names()[15:]
    assert {item.label for item in new.test} == set(range(15))


def test_pretraining_is_reproducible_and_loads_like_official_weights(tmp_path):
    small = dict(steps=3, batch_size=8, pool_size=32, seed=0)
    first = pretrain_tiny_clip.pretrain(str(tmp_path / "a.pt"), **small)
    second = pretrain_tiny_clip.pretrain(str(tmp_path / "b.pt"), **small)
    third = pretrain_tiny_clip.pretrain(str(tmp_path / "c.pt"), **dict(small, seed=1))
    a, b, c = (torch.load(path, weights_only=True) for path in (first, second, third))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert all(t.dtype == torch.float16 for t in a.values() if t.is_floating_point())
    model, preprocess = clip.load(first, device="cpu")
    assert model.visual.input_resolution == 32
    with torch.no_grad():
        features = model.encode_text(clip.tokenize(["a photo of a red circle."]))
    assert features.shape == (1, pretrain_tiny_clip.TOY_CLIP["embed_dim"])


def test_dataset_from_another_world_version_is_redrawn(tmp_path, monkeypatch, capsys):
    make_dataset.make_dataset(str(tmp_path), PER_CLASS, seed=0)
    make_dataset.make_dataset(str(tmp_path), PER_CLASS, seed=0)
    assert "already at" in capsys.readouterr().out
    image = tmp_path / "toy_shapes" / "images" / "red_circle" / "train_000.png"
    image.write_bytes(b"drawn by an older world")
    monkeypatch.setattr(make_dataset.world, "WORLD_VERSION", make_dataset.world.WORLD_VERSION + 1)
    make_dataset.make_dataset(str(tmp_path), PER_CLASS, seed=0)
    assert "redrawing" in capsys.readouterr().out
    assert image.read_bytes().startswith(b"\x89PNG")
    world = json.loads((tmp_path / "toy_shapes" / make_dataset.WORLD_FILE).read_text())
    assert world["world_version"] == make_dataset.world.WORLD_VERSION
