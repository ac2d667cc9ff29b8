"""The legacy-checkpoint reader against the files an attacker or a careless user writes: real Dassl.pytorch
checkpoints with pickle opcodes spliced in where one value was, each refused with one line before it is
unpickled further than the dry run allows, the file and its folder left as they were; a scheduler state
reaches a live scheduler only through its own keys, types and ranges."""
import hashlib
import struct
import zipfile
from collections import defaultdict

import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from dassl.config import get_cfg_default
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import CheckpointError, check_checkpoint, load_checkpoint, load_optimizer_and_scheduler
from tests.helpers import write_dassl_pytorch_checkpoint

PLACEHOLDER = "SPLICE-HERE"


def opcode_global(path):
    module, name = path.rsplit(".", 1)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


STEP_LR = opcode_global("torch.optim.lr_scheduler.StepLR")
NEWOBJ, REDUCE, BUILD, EMPTY_TUPLE, EMPTY_DICT, NONE, TUPLE1, TUPLE2, SETITEM = (
    b"\x81", b"R", b"b", b")", b"}", b"N", b"\x85", b"\x86", b"s")


def one(value):
    return b"K" + bytes([value])  # BININT1


def text(value):
    return b"X" + struct.pack("<I", len(value)) + value.encode()  # BINUNICODE


def long1(value):
    data = value.to_bytes((value.bit_length() + 8) // 8, "little")
    return b"\x8a" + bytes([len(data)]) + data


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def spliced_checkpoint(folder, place, opcodes):
    """A Dassl.pytorch checkpoint (pickled warm-up scheduler included) whose value at ``place`` (a function
    that puts PLACEHOLDER into the loaded dict) is replaced, in the file's pickle, by ``opcodes``."""
    path = folder / "model.pth.tar-1"
    write_dassl_pytorch_checkpoint(path, {"ctx": torch.zeros(4, 64)}, epoch=1)
    raw = torch.load(path, weights_only=False)  # the test's own file
    place(raw)
    torch.save(raw, path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert data.count(text(PLACEHOLDER)) == 1
                data = data.replace(text(PLACEHOLDER), opcodes)
            archive.writestr(info, data)
    return path


def in_scheduler(raw):
    raw["scheduler"]["extra"] = PLACEHOLDER


def in_successor_state(raw):
    raw["scheduler"]["successor"].__dict__["extra"] = PLACEHOLDER


def as_optimizer(raw):
    raw["optimizer"] = PLACEHOLDER




def redirected_setstate(target):
    """An object whose first BUILD sets ``__setstate__`` to ``target``, which a second BUILD would call."""
    return (STEP_LR + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + text("__setstate__") + opcode_global(target) + SETITEM
            + BUILD + long1(2 ** 45) + BUILD)


@pytest.mark.parametrize("place, opcodes, fragment", [
    (in_scheduler, STEP_LR + one(1) + TUPLE1 + REDUCE, "builds its pickled torch.optim.lr_scheduler.StepLR from "
                                                       "arguments"),
    (in_scheduler, STEP_LR + one(1) + TUPLE1 + NEWOBJ, "builds its pickled torch.optim.lr_scheduler.StepLR from "
                                                       "arguments"),
    (in_scheduler, opcode_global("collections.defaultdict") + NONE + NONE + TUPLE2 + REDUCE,
     "calls collections.defaultdict with 2 arguments"),
    (in_scheduler, STEP_LR + EMPTY_TUPLE + NEWOBJ + NONE + BUILD,
     "sets the attributes of its pickled torch.optim.lr_scheduler.StepLR twice or from a value"),
    (in_scheduler, EMPTY_DICT + EMPTY_DICT + BUILD, "sets attributes of a dict"),
    (in_successor_state, redirected_setstate("collections.Counter"), "sets the attributes of its pickled "
                                                                     "torch.optim.lr_scheduler.StepLR twice"),
    (in_successor_state, redirected_setstate("__builtin__.bytearray"), "calls builtins.bytearray, which "
                                                                       "allocates as many bytes as the file asks"),
    (in_scheduler, opcode_global("__builtin__.bytearray") + long1(2 ** 45) + TUPLE1 + REDUCE,
     "calls builtins.bytearray"),
    (in_scheduler, NONE + TUPLE1 * 3000, "nests values more than 64 levels deep"),
    (in_scheduler, STEP_LR + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + BUILD,
     "its scheduler state holds a StepLR under 'extra', where a scheduler keeps numbers"),
    (as_optimizer, opcode_global("torch.optim.sgd.SGD") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + BUILD,
     "holds a pickled torch.optim.sgd.SGD as checkpoint['optimizer'], where Dassl.pytorch writes none"),
], ids=["reduce-with-arguments", "newobj-with-arguments", "defaultdict-two-arguments", "build-none",
        "build-on-a-dict", "setstate-redirect", "setstate-redirect-to-bytearray", "bytearray-2**45",
        "nesting-3000-deep", "steplr-inside-the-scheduler-state", "optimizer-is-a-pickled-object"])
def test_a_malformed_pickle_is_one_line_and_leaves_the_folder_as_it_was(tmp_path, place, opcodes, fragment):
    path = spliced_checkpoint(tmp_path, place, opcodes)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(str(path))
    message = str(refused.value)
    assert fragment in message and message.startswith(f'Refusing to load "{path}"') and "\n" not in message
    assert "nothing in it was run" in message
    assert snapshot(tmp_path) == before


def test_text_given_as_a_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "model.pth.tar-2"
    path.write_text("epoch: 2\nstate_dict: see model.pth.tar-1\n")
    with pytest.raises(CheckpointError, match=rf'Refusing to load "{path}": it is not a checkpoint') as refused:
        load_checkpoint(str(path))
    assert "\n" not in str(refused.value)


def test_a_text_val_result_is_refused_as_no_checkpoint_of_a_training_run(tmp_path):
    path = write_dassl_pytorch_checkpoint(tmp_path / "model.pth.tar-1", {"ctx": torch.zeros(4, 64)}, epoch=1,
                                          extra={"val_result": "72.5%"})
    with pytest.raises(CheckpointError, match="its val_result is a str, not a number"):
        check_checkpoint(load_checkpoint(str(path)), str(path))


def warmup_scheduler(warmup_epoch=1):
    """This project's optimizer and scheduler for the recipe write_dassl_pytorch_checkpoint trains with."""
    optim_cfg = get_cfg_default().OPTIM
    optim_cfg.merge_from_list(["NAME", "sgd", "LR_SCHEDULER", "cosine", "MAX_EPOCH", 2,
                               "WARMUP_EPOCH", warmup_epoch, "WARMUP_TYPE", "constant"])
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(4, 64))], optim_cfg)
    return optimizer, build_lr_scheduler(optimizer, optim_cfg)


@pytest.mark.parametrize("successor", ["dassl-pickled-object", "plain-state-dict"])
def test_a_dict_stored_under_the_successors_step_never_replaces_its_method(tmp_path, successor):
    """The successor (Dassl.pytorch's pickled object, or this project's state dict) holding ``step`` =
    defaultdict: the schedule still advances, and the state saved next is plain data that loads again."""
    path = write_dassl_pytorch_checkpoint(tmp_path / "model.pth.tar-1", {"ctx": torch.zeros(4, 64)}, epoch=1)
    raw = torch.load(path, weights_only=False)
    if successor == "plain-state-dict":
        raw["scheduler"]["successor"] = LRScheduler.state_dict(raw["scheduler"]["successor"])
        raw["scheduler"]["successor"]["step"] = defaultdict(dict)
    else:
        raw["scheduler"]["successor"].step = defaultdict(dict)
    torch.save(raw, path)
    optimizer, scheduler = warmup_scheduler()
    load_optimizer_and_scheduler(load_checkpoint(str(path)), str(path), optimizer, scheduler)
    optimizer.step()
    scheduler.step()
    assert scheduler.successor.last_epoch == 1  # past the warm-up, the successor takes the step
    torch.save({"state_dict": {}, "epoch": 2, "scheduler": scheduler.state_dict()}, tmp_path / "next.pth")
    assert load_checkpoint(str(tmp_path / "next.pth"))["scheduler"]["successor"]["last_epoch"] == 1


@pytest.mark.parametrize("change, fragment", [
    (lambda state: state["successor"].update(last_epoch={"a": 1}), "successor state has last_epoch = {'a': 1}"),
    (lambda state: state.update(base_lrs=[0.1, 0.2]), "scheduler state has base_lrs = [0.1, 0.2]"),
    (lambda state: state.update(cons_lr=-1.0), "scheduler state has cons_lr = -1.0"),
    (lambda state: state["successor"].update(T_max=10 ** 300), "T_max = 1000000"),
    (lambda state: state.pop("successor"), "its LR schedule lacks a warm-up and this run's has one"),
], ids=["last-epoch-a-dict", "two-lrs-for-one-group", "negative-lr", "t-max-10**300", "no-successor"])
def test_a_scheduler_state_reaches_the_scheduler_only_through_its_keys_types_and_ranges(tmp_path, change,
                                                                                     fragment):
    """This project's plain-data format too: a value of another type, length or range is one line."""
    optimizer, scheduler = warmup_scheduler()
    checkpoint = {"state_dict": {}, "epoch": 1, "scheduler": scheduler.state_dict()}
    change(checkpoint["scheduler"])
    before = scheduler.state_dict()
    with pytest.raises(CheckpointError, match="^\"x.pth\": ") as refused:
        load_optimizer_and_scheduler(checkpoint, "x.pth", optimizer, scheduler)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
    assert scheduler.state_dict() == before


def test_a_dassl_run_without_warmup_resumed_with_one_is_one_line(tmp_path):
    """Dassl.pytorch's plain cosine scheduler (no successor), into a run whose recipe has a warm-up."""
    path = write_dassl_pytorch_checkpoint(tmp_path / "model.pth.tar-1", {"ctx": torch.zeros(4, 64)}, epoch=1)
    raw = torch.load(path, weights_only=False)
    raw["scheduler"] = LRScheduler.state_dict(raw["scheduler"]["successor"])
    torch.save(raw, path)
    optimizer, scheduler = warmup_scheduler()
    with pytest.raises(CheckpointError, match="its LR schedule lacks a warm-up and this run's has one: resume "
                                              "with the OPTIM.WARMUP_EPOCH"):
        load_optimizer_and_scheduler(load_checkpoint(str(path)), str(path), optimizer, scheduler)
    _, without_warmup = warmup_scheduler(warmup_epoch=0)
    load_optimizer_and_scheduler(load_checkpoint(str(path)), str(path), None, without_warmup)
    assert without_warmup.last_epoch == 0 and without_warmup.get_last_lr() == pytest.approx([0.0003])
