"""Unit tests of the Dassl-compatible pieces: LR schedule, config, registry, evaluator, transforms, utils.

The end-to-end engine tests are in test_dassl_engine.py and the bad-input catalogue in
test_bad_inputs.py; this file checks the building blocks one at a time, in-process, in seconds.
"""
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import train
from clip import clip as clip_module
from clip.tiny import save_tiny_clip
from dassl.config import get_cfg_default
from dassl.data.transforms import build_transform
from dassl.evaluation import Classification, build_evaluator
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import (
    AverageMeter,
    MetricMeter,
    Registry,
    atomic_write,
    check_availability,
    load_checkpoint,
    read_image,
    resume_from_checkpoint,
    save_checkpoint,
    setup_logger,
)
from dassl.utils.logger import Logger
from tests.helpers import LINEAR_PROBE_CONFIG, make_tiny_folders, run_main

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# --- 1. LR schedule -------------------------------------------------------------------------------

# CoCoOp's per-epoch learning rates, as Dassl prints them for vit_b16_c4_ep10_batch1_ctxv1.
COCOOP_EPOCH_LRS = [1.0e-05, 2.000e-03, 1.951e-03, 1.809e-03, 1.588e-03,
                    1.309e-03, 1.000e-03, 6.910e-04, 4.122e-04, 1.910e-04]


def cocoop_optim_cfg():
    cfg = get_cfg_default()
    cfg.merge_from_list([
        "OPTIM.NAME", "sgd", "OPTIM.LR", 0.002, "OPTIM.LR_SCHEDULER", "cosine", "OPTIM.MAX_EPOCH", 10,
        "OPTIM.WARMUP_EPOCH", 1, "OPTIM.WARMUP_TYPE", "constant", "OPTIM.WARMUP_CONS_LR", 1e-5,
    ])
    return cfg.OPTIM


def build_cocoop_schedule():
    model = nn.Linear(3, 2)
    optim = build_optimizer(model, cocoop_optim_cfg())
    return model, optim, build_lr_scheduler(optim, cocoop_optim_cfg())


def lr_of(optim):
    return optim.param_groups[0]["lr"]


def same_4_digits(value, expected):
    return f"{value:.3e}" == f"{expected:.3e}"


def test_cocoop_schedule_matches_dassl_epoch_by_epoch():
    _, optim, sched = build_cocoop_schedule()
    assert isinstance(optim, torch.optim.SGD)
    assert optim.defaults["momentum"] == 0.9 and optim.defaults["weight_decay"] == 5e-4
    lrs = []
    for _ in range(10):
        lrs.append(lr_of(optim))  # the LR every iteration of this epoch uses
        optim.step()
        sched.step()  # CoOp-family trainers step once, after the last batch of an epoch
    for epoch, (got, expected) in enumerate(zip(lrs, COCOOP_EPOCH_LRS), start=1):
        assert same_4_digits(got, expected), f"epoch {epoch}: lr {got:.4e}, Dassl has {expected:.4e}"
    assert sched.get_last_lr() == [lr_of(optim)]


@pytest.mark.parametrize("stop_after", [1, 5])  # inside the warm-up hand-over, and mid cosine
def test_scheduler_state_is_plain_data_and_restores_the_next_lr(tmp_path, stop_after):
    model, optim, sched = build_cocoop_schedule()
    for _ in range(stop_after):
        optim.step()
        sched.step()
    path = tmp_path / "state.pth"
    torch.save({"optimizer": optim.state_dict(), "scheduler": sched.state_dict()}, path)
    loaded = torch.load(path, weights_only=True)  # fails if the state holds any pickled object

    _, optim2, sched2 = build_cocoop_schedule()
    optim2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    assert lr_of(optim2) == lr_of(optim)
    for epoch in range(stop_after, 10):
        assert same_4_digits(lr_of(optim2), COCOOP_EPOCH_LRS[epoch])
        for opt, sch in ((optim, sched), (optim2, sched2)):
            opt.step()
            sch.step()
        assert lr_of(optim2) == lr_of(optim)


# --- 2. Config ------------------------------------------------------------------------------------


def test_defaults_have_dassl_values_and_types():
    cfg = get_cfg_default()
    expected = {
        "OUTPUT_DIR": "./output", "RESUME": "", "SEED": -1, "USE_CUDA": True,
        "INPUT.SIZE": (224, 224), "INPUT.INTERPOLATION": "bilinear", "INPUT.TRANSFORMS": (),
        "INPUT.PIXEL_MEAN": [0.485, 0.456, 0.406], "INPUT.RRCROP_SCALE": (0.08, 1.0),
        "DATASET.NUM_SHOTS": -1, "DATALOADER.NUM_WORKERS": 4, "DATALOADER.TRAIN_X.BATCH_SIZE": 32,
        "DATALOADER.TRAIN_X.SAMPLER": "RandomSampler", "DATALOADER.TEST.SAMPLER": "SequentialSampler",
        "OPTIM.NAME": "adam", "OPTIM.LR": 0.0003, "OPTIM.WEIGHT_DECAY": 5e-4, "OPTIM.MOMENTUM": 0.9,
        "OPTIM.LR_SCHEDULER": "single_step", "OPTIM.MAX_EPOCH": 10, "OPTIM.WARMUP_EPOCH": -1,
        "OPTIM.WARMUP_TYPE": "linear", "OPTIM.WARMUP_CONS_LR": 1e-5, "OPTIM.WARMUP_RECOUNT": True,
        "TRAIN.CHECKPOINT_FREQ": 0, "TRAIN.PRINT_FREQ": 10, "TEST.EVALUATOR": "Classification",
        "TEST.PER_CLASS_RESULT": False, "TEST.COMPUTE_CMAT": False, "TEST.FINAL_MODEL": "last_step",
        "TRAINER.NAME": "",
    }
    for key, value in expected.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value and type(node) is type(value), f"{key} = {node!r}"


def test_get_cfg_default_returns_an_independent_copy():
    first = get_cfg_default()
    first.OPTIM.LR = 0.5
    first.INPUT.PIXEL_MEAN[0] = 0.0
    second = get_cfg_default()
    assert second.OPTIM.LR == 0.0003 and second.INPUT.PIXEL_MEAN[0] == 0.485


def test_setup_cfg_merge_order(tmp_path):
    """defaults < dataset YAML < trainer YAML < command-line flags < trailing KEY VALUE opts."""
    dataset_yaml = tmp_path / "dataset.yaml"
    dataset_yaml.write_text("DATASET:\n  NAME: 'FromDataset'\n  ROOT: 'ds_root'\nSEED: 5\n"
                            "OPTIM:\n  LR: 0.1\n  MAX_EPOCH: 3\n  GAMMA: 0.5\nOUTPUT_DIR: 'ds_out'\n")
    method_yaml = tmp_path / "method.yaml"
    method_yaml.write_text("SEED: 6\nOPTIM:\n  MAX_EPOCH: 4\n  GAMMA: 0.25\nOUTPUT_DIR: 'method_out'\n"
                           "INPUT:\n  SIZE: (32, 48)\n")
    args = train.build_parser().parse_args([
        "--dataset-config-file", str(dataset_yaml), "--config-file", str(method_yaml),
        "--output-dir", "cli_out", "--seed", "7", "OPTIM.GAMMA", "0.125", "SEED", "8",
    ])
    cfg = train.setup_cfg(args, modules=[])
    assert cfg.DATASET.NAME == "FromDataset" and cfg.DATASET.ROOT == "ds_root"  # dataset beats defaults
    assert cfg.OPTIM.LR == 0.1
    assert cfg.OPTIM.MAX_EPOCH == 4  # trainer YAML beats dataset YAML
    assert cfg.INPUT.SIZE == (32, 48)  # literal_eval: a tuple, not a string
    assert cfg.OUTPUT_DIR == "cli_out"  # flag beats both YAMLs
    assert cfg.OPTIM.GAMMA == 0.125  # opts beat YAMLs
    assert cfg.SEED == 8  # opts beat the --seed flag
    assert cfg.OPTIM.NAME == "adam"  # untouched default
    assert cfg.is_frozen()


def test_seed_flag_zero_is_honoured(tmp_path):
    method_yaml = tmp_path / "method.yaml"
    method_yaml.write_text("SEED: 6\n")
    args = train.build_parser().parse_args(["--config-file", str(method_yaml), "--seed", "0"])
    assert train.setup_cfg(args, modules=[]).SEED == 0


def test_unknown_key_is_refused_with_its_name(tmp_path):
    with pytest.raises((KeyError, AssertionError), match="OPTIM.MAX_EPOCHS"):
        get_cfg_default().merge_from_list(["OPTIM.MAX_EPOCHS", "2"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("OPTIM:\n  LEARNING_RATE: 0.1\n")
    with pytest.raises(KeyError, match="OPTIM.LEARNING_RATE"):
        get_cfg_default().merge_from_file(str(bad_yaml))


@pytest.mark.parametrize("key, value", [("OPTIM.MAX_EPOCH", "abc"), ("OPTIM.LR", "fast"),
                                        ("INPUT.SIZE", "big"), ("TEST.PER_CLASS_RESULT", "'yes'")])
def test_wrong_type_is_refused_with_the_key_named(key, value):
    with pytest.raises(ValueError, match=re.escape(key)):
        get_cfg_default().merge_from_list([key, value])


@pytest.fixture
def method_yaml(tmp_path):
    path = tmp_path / "method.yaml"
    path.write_text("OPTIM:\n  MAX_EPOCH: 1\n")
    return path


@pytest.mark.parametrize("opts, message", [
    (["OPTIM.LR", "fast"], "OPTIM.LR"),  # a string for a float
    (["OPTIM.MAX_EPOCH"], "odd length"),  # a key without its value
])
def test_train_main_reports_bad_opts_in_one_line_with_exit_2(tmp_path, capsys, method_yaml, opts, message):
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "--config-file", method_yaml, "--output-dir", out, *opts)
    assert code == 2
    assert err.startswith("train.py: error:") and message in err and "Traceback" not in err
    assert not out.exists()


def test_train_main_reports_unknown_key_in_a_config_file(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("OPTIM:\n  LEARNING_RATE: 0.1\n")
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "--config-file", bad_yaml, "--output-dir", out)
    assert code == 2 and "OPTIM.LEARNING_RATE" in err and "Traceback" not in err
    assert not out.exists()


def test_train_main_reports_a_missing_config_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "--dataset-config-file", missing, "--output-dir", out)
    assert code == 2 and str(missing) in err and "Traceback" not in err
    assert not out.exists()


# --- 3. Registry ----------------------------------------------------------------------------------


def test_registry_register_get_and_duplicates():
    registry = Registry("THING")

    @registry.register()
    class LinearProbe:
        pass

    def zero_shot():
        return 0

    assert registry.register(zero_shot) is zero_shot  # the call form returns the object
    assert registry.get("LinearProbe") is LinearProbe and registry.get("zero_shot") is zero_shot
    assert registry.registered_names() == ["LinearProbe", "zero_shot"]

    class Impostor:
        pass

    Impostor.__name__ = "LinearProbe"
    with pytest.raises(KeyError, match='"LinearProbe".*already registered.*"THING"'):
        registry.register(Impostor)
    assert registry.get("LinearProbe") is LinearProbe  # the refused one did not replace it
    registry.register(Impostor, force=True)
    assert registry.get("LinearProbe") is Impostor


def test_registry_miss_names_the_closest_entry():
    registry = Registry("TRAINER")
    for name in ("CoOp", "CoCoOp", "LinearProbe"):
        registry.register(type(name, (), {}))
    with pytest.raises(KeyError) as info:
        registry.get("LinearProbes")
    message = info.value.args[0]
    assert 'No object named "LinearProbes" found in "TRAINER" registry' in message
    assert message.endswith('Do you mean "LinearProbe"?')
    with pytest.raises(KeyError) as info:
        registry.get("zzzzzz")
    assert "Do you mean" not in info.value.args[0]


def test_check_availability_hint():
    with pytest.raises(ValueError, match='but got "CoCoop". Do you mean "CoCoOp"\\?'):
        check_availability("CoCoop", ["CoOp", "CoCoOp", "MuPL"])
    check_availability("MuPL", ["CoOp", "CoCoOp", "MuPL"])  # no error


# --- 4. Evaluator ---------------------------------------------------------------------------------

GT = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PRED = [0, 0, 0, 1, 1, 1, 2, 2, 0, 0]
CLASSNAMES = {0: "cat", 1: "dog", 2: "fox"}


def hand_macro_f1(gt, pred):
    """Per-class F1 = 2PR/(P+R) from TP/FP/FN counts, averaged over the classes present in ``gt``."""
    scores = []
    for c in sorted(set(gt)):
        tp = sum(g == c and p == c for g, p in zip(gt, pred))
        fp = sum(g != c and p == c for g, p in zip(gt, pred))
        fn = sum(g == c and p != c for g, p in zip(gt, pred))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn)
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return 100.0 * sum(scores) / len(scores)


def eval_cfg(tmp_path=None, **test_keys):
    cfg = get_cfg_default()
    if tmp_path is not None:
        cfg.OUTPUT_DIR = str(tmp_path)
    for key, value in test_keys.items():
        cfg.TEST[key] = value
    return cfg


def feed(evaluator, gt, pred, num_classes=3, batch=4):
    """Logits whose argmax is ``pred``, in several batches like a test loader."""
    for start in range(0, len(gt), batch):
        labels = torch.tensor(gt[start:start + batch])
        logits = torch.randn(len(labels), num_classes).abs()
        logits[torch.arange(len(labels)), torch.tensor(pred[start:start + batch])] = 10.0
        evaluator.process(logits, labels)


def test_hand_macro_f1_of_the_small_case():
    # class 0: P 3/5 R 3/4, class 1: P 2/3 R 2/3, class 2: P 1/2 R 1/3
    f1 = [2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4), 2 / 3, 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)]
    assert hand_macro_f1(GT, PRED) == pytest.approx(100 * sum(f1) / 3)


def test_classification_result_block(capsys):
    evaluator = build_evaluator(eval_cfg(), lab2cname=CLASSNAMES)
    assert isinstance(evaluator, Classification)
    feed(evaluator, GT, PRED)
    results = evaluator.evaluate()
    correct = sum(g == p for g, p in zip(GT, PRED))
    accuracy = 100.0 * correct / len(GT)
    macro_f1 = hand_macro_f1(GT, PRED)
    assert results["accuracy"] == pytest.approx(accuracy)
    assert results["error_rate"] == pytest.approx(100.0 - accuracy)
    assert results["macro_f1"] == pytest.approx(macro_f1)
    assert list(results)[0] == "accuracy"  # the trainer's test() returns the first metric
    assert capsys.readouterr().out == (
        "=> result\n"
        f"* total: {len(GT)}\n"
        f"* correct: {correct}\n"
        f"* accuracy: {accuracy:.1f}%\n"
        f"* error: {100.0 - accuracy:.1f}%\n"
        f"* macro_f1: {macro_f1:.1f}%\n"
    )


def test_reset_forgets_earlier_batches_and_counts_get_thousands_separators(capsys):
    evaluator = build_evaluator(eval_cfg())
    feed(evaluator, GT, PRED)
    evaluator.reset()
    gt = [0, 1] * 600
    pred = [0, 0] * 600
    feed(evaluator, gt, pred, num_classes=2, batch=100)
    evaluator.evaluate()
    out = capsys.readouterr().out
    assert "* total: 1,200\n* correct: 600\n* accuracy: 50.0%\n" in out
    assert f"* macro_f1: {hand_macro_f1(gt, pred):.1f}%" in out


def test_macro_f1_averages_only_over_classes_present_in_the_labels():
    evaluator = build_evaluator(eval_cfg())
    gt, pred = [0, 0, 1, 1], [0, 2, 1, 1]  # class 2 is predicted once but never a label
    feed(evaluator, gt, pred)
    assert evaluator.evaluate()["macro_f1"] == pytest.approx(hand_macro_f1(gt, pred))


def test_per_class_results(capsys):
    evaluator = build_evaluator(eval_cfg(PER_CLASS_RESULT=True), lab2cname=CLASSNAMES)
    feed(evaluator, GT, PRED)
    results = evaluator.evaluate()
    out = capsys.readouterr().out
    accs = []
    for label, name in CLASSNAMES.items():
        total = GT.count(label)
        correct = sum(g == p == label for g, p in zip(GT, PRED))
        accs.append(100.0 * correct / total)
        assert f"* class: {label} ({name})\ttotal: {total}\tcorrect: {correct}\tacc: {accs[-1]:.1f}%\n" in out
    assert out.index("=> per-class result") > out.index("* macro_f1:")
    assert f"* average: {np.mean(accs):.1f}%\n" in out
    assert results["perclass_accuracy"] == pytest.approx(np.mean(accs))


def test_per_class_results_need_class_names():
    with pytest.raises(ValueError, match="lab2cname"):
        build_evaluator(eval_cfg(PER_CLASS_RESULT=True))


def test_confusion_matrix_file(tmp_path, capsys):
    evaluator = build_evaluator(eval_cfg(tmp_path, COMPUTE_CMAT=True), lab2cname=CLASSNAMES)
    feed(evaluator, GT, PRED)
    evaluator.evaluate()
    path = tmp_path / "cmat.pt"
    assert f"Confusion matrix is saved to {path}" in capsys.readouterr().out
    cmat = torch.load(path, weights_only=True)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for g, p in zip(GT, PRED):
        expected[g, p] += 1
    expected /= expected.sum(1, keepdim=True)  # rows normalised over the true class
    assert cmat.shape == (3, 3) and torch.allclose(cmat.double(), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmat.pt"]


def test_no_cmat_file_unless_asked(tmp_path):
    evaluator = build_evaluator(eval_cfg(tmp_path), lab2cname=CLASSNAMES)
    feed(evaluator, GT, PRED)
    evaluator.evaluate()
    assert list(tmp_path.iterdir()) == []


def test_unknown_evaluator_is_refused():
    with pytest.raises(KeyError, match='Do you mean "Classification"'):
        build_evaluator(eval_cfg(EVALUATOR="Clasification"))


# --- 5. Transforms --------------------------------------------------------------------------------


def clip_input_cfg(size):
    cfg = get_cfg_default()
    cfg.merge_from_list([
        "INPUT.SIZE", size, "INPUT.INTERPOLATION", "bicubic",
        "INPUT.PIXEL_MEAN", list(clip_module.CLIP_MEAN), "INPUT.PIXEL_STD", list(clip_module.CLIP_STD),
        "INPUT.TRANSFORMS", ["random_resized_crop", "random_flip", "normalize"],
    ])
    return cfg


def random_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3)).astype(np.uint8))


@pytest.mark.parametrize("size", [(224, 224), (32, 32), (24, 40)])
@pytest.mark.parametrize("is_train", [True, False])
def test_transform_output_shape(size, is_train):
    tfm = build_transform(clip_input_cfg(size), is_train=is_train)
    for width, height in ((300, 217), (50, 90)):
        out = tfm(random_image(width, height))
        assert out.dtype == torch.float32 and tuple(out.shape) == (3, *size)


def test_normalize_only_when_listed():
    cfg = clip_input_cfg((32, 32))
    cfg.INPUT.TRANSFORMS = ("random_flip",)
    out = build_transform(cfg, is_train=False)(random_image(50, 40))
    assert out.min() >= 0.0 and out.max() <= 1.0
    normalized = build_transform(clip_input_cfg((32, 32)), is_train=False)(random_image(50, 40))
    assert normalized.min() < 0.0


def test_test_transform_equals_clip_preprocess(tmp_path):
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    _, preprocess = clip_module.load(str(weights))
    cases = [((32, 32), preprocess), ((224, 224), clip_module._transform(224))]
    for size, reference in cases:
        tfm = build_transform(clip_input_cfg(size), is_train=False)
        for index, (width, height) in enumerate(((300, 217), (217, 300), (31, 45))):
            image = random_image(width, height, seed=index)
            ours, theirs = tfm(image), reference(image)
            assert ours.shape == theirs.shape == (3, *size)
            assert (ours - theirs).abs().max().item() <= 1e-6


def test_bilinear_test_transform_differs_from_clip(tmp_path):
    """The equality above depends on the configured interpolation, so it can fail."""
    cfg = clip_input_cfg((224, 224))
    cfg.INPUT.INTERPOLATION = "bilinear"
    image = random_image(300, 217)
    diff = build_transform(cfg, is_train=False)(image) - clip_module._transform(224)(image)
    assert diff.abs().max().item() > 1e-3


# --- 6. Utils -------------------------------------------------------------------------------------


def test_setup_logger_keeps_an_existing_log(tmp_path):
    (tmp_path / "log.txt").write_text("first run\n")
    original = sys.stdout
    try:
        setup_logger(str(tmp_path))
        print("second run")
        setup_logger(str(tmp_path))  # same second: must not overwrite the second log either
        print("third run")
    finally:
        if isinstance(sys.stdout, Logger):
            sys.stdout.close()
    assert sys.stdout is original
    assert (tmp_path / "log.txt").read_text() == "first run\n"
    stamped = sorted((p for p in tmp_path.iterdir() if p.name != "log.txt"), key=lambda p: len(p.name))
    assert len(stamped) == 2
    for path in stamped:
        assert re.fullmatch(r"log\.txt-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d(-\d+)?", path.name), path.name
    assert sorted(p.read_text() for p in stamped) == ["second run\n", "third run\n"]


def test_setup_logger_tees_stdout_into_a_new_log(tmp_path, capsys):
    try:
        setup_logger(str(tmp_path / "run"))
        print("hello log")
    finally:
        sys.stdout.close()
    assert (tmp_path / "run" / "log.txt").read_text() == "hello log\n"
    assert "hello log" in capsys.readouterr().out


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(str(path), mode="w") as handle:
            handle.write("half of the new conte")
            handle.flush()
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]

    with pytest.raises(RuntimeError):
        with atomic_write(str(tmp_path / "fresh.bin")) as handle:
            handle.write(b"x")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]

    with atomic_write(str(path), mode="w") as handle:
        handle.write("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_write(str(tmp_path / "shared.txt"), mode="w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o640


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path, capsys):
    model, optim, sched = build_cocoop_schedule()
    for _ in range(3):
        optim.step()
        sched.step()
    state = {
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},  # as DataParallel saves
        "epoch": 3, "optimizer": optim.state_dict(), "scheduler": sched.state_dict(), "val_result": None,
    }
    save_dir = tmp_path / "prompt_learner"
    fpath = save_checkpoint(state, str(save_dir), is_best=True)
    assert Path(fpath) == save_dir / "model.pth.tar-3"
    assert (save_dir / "checkpoint").read_text().strip() == "model.pth.tar-3"
    assert sorted(p.name for p in save_dir.iterdir()) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3"]
    assert (save_dir / "model-best.pth.tar").read_bytes() == Path(fpath).read_bytes()

    raw = torch.load(fpath, weights_only=True)
    assert set(raw["state_dict"]) == set(model.state_dict())  # "module." prefixes removed
    loaded = load_checkpoint(fpath)
    assert loaded["epoch"] == 3 and loaded["val_result"] is None
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["state_dict"][key], value)

    fresh_model, fresh_optim, fresh_sched = build_cocoop_schedule()
    assert resume_from_checkpoint(str(save_dir), fresh_model, fresh_optim, fresh_sched) == 3
    assert torch.equal(fresh_model.weight, model.weight)
    assert lr_of(fresh_optim) == lr_of(optim)
    fresh_optim.step()
    fresh_sched.step()
    assert same_4_digits(lr_of(fresh_optim), COCOOP_EPOCH_LRS[4])


def test_load_checkpoint_missing_file_names_it(tmp_path):
    missing = tmp_path / "model.pth.tar-9"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_checkpoint(str(missing))


def test_average_meter():
    meter = AverageMeter()
    meter.update(2.0)
    meter.update(torch.tensor(4.0), n=3)
    assert meter.val == 4.0 and meter.count == 4 and meter.sum == 14.0
    assert meter.avg == pytest.approx((2.0 + 3 * 4.0) / 4)
    meter.reset()
    assert (meter.val, meter.avg, meter.sum, meter.count) == (0, 0, 0, 0)

    ema = AverageMeter(ema=True)
    ema.update(2.0)
    ema.update(4.0)
    assert ema.avg == pytest.approx((0.0 * 0.9 + 2.0 * 0.1) * 0.9 + 4.0 * 0.1)


def test_metric_meter_log_fragment():
    meter = MetricMeter()
    meter.update({"loss": torch.tensor(1.0), "acc": 50})
    meter.update({"loss": 3.0, "acc": 100.0})
    assert meter.meters["loss"].avg == pytest.approx(2.0) and meter.meters["acc"].avg == pytest.approx(75.0)
    assert str(meter) == "loss 3.0000 (2.0000) acc 100.0000 (75.0000)"
    with pytest.raises(TypeError):
        meter.update([1.0])


def test_read_image(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((5, 7), 100, dtype=np.uint8)).save(gray)
    image = read_image(str(gray))
    assert image.mode == "RGB" and image.size == (7, 5)

    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_image(str(missing))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(OSError, match=re.escape(str(corrupt))):
        read_image(str(corrupt))
    truncated = tmp_path / "truncated.png"
    random_image(64, 64).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(OSError, match=re.escape(str(truncated))):
        read_image(str(truncated))


# --- 7. No warnings from the project's own modules in a normal run --------------------------------



def project_file(filename):
    path = Path(filename).resolve()
    return REPO in path.parents and (REPO / ".venv") not in path.parents


def test_a_normal_run_emits_no_warning_from_project_code(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("MUPL_EXTRA_PLUGINS", "fixture_plugins.linear_probe")
    make_tiny_folders(tmp_path / "data")
    (tmp_path / "cfg.yaml").write_text(LINEAR_PROBE_CONFIG)
    out = tmp_path / "out"
    argv = ["--root", tmp_path / "data", "--seed", "1", "--trainer", "LinearProbe",
            "--config-file", tmp_path / "cfg.yaml", "--output-dir", out, "OPTIM.MAX_EPOCH", "2",
            "TEST.PER_CLASS_RESULT", "True", "TEST.COMPUTE_CMAT", "True"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, stdout, err = run_main(capsys, *argv)  # train, save, test
        assert code == 0, err
        code, _, err = run_main(capsys, *argv)  # rerun: resume from the finished run, test only
        assert code == 0, err
        code, _, err = run_main(capsys, *argv[:8], "--output-dir", tmp_path / "eval", "--eval-only",
                                "--model-dir", out, "--load-epoch", "2", *argv[10:])
        assert code == 0, err
    assert "Finish training" in stdout and "=> per-class result" in stdout and (out / "cmat.pt").is_file()
    ours = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}"
            for w in caught if project_file(w.filename)]
    assert ours == []
    assert project_file(REPO / "dassl" / "utils" / "tools.py")
    assert not project_file(REPO / ".venv" / "lib" / "x.py")
