"""CoOp's command line: train or evaluate one trainer on one dataset.

    python train.py --root $DATA --seed 1 --trainer MuPL \
        --dataset-config-file configs/datasets/oxford_pets.yaml \
        --config-file configs/trainers/MuPL/vit_b16_c4_ep10_batch1_ctxv1.yaml \
        --output-dir output/... DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base

Under ``torchrun --nproc_per_node=N train.py ...`` it trains with DistributedDataParallel (nccl on
CUDA, gloo otherwise); only rank 0 prints, logs and writes.

Exit codes: 0; 2, a request or config value refused before anything is written; 1, a user-fixable error
found while running; 75, the output folder is in use by another run; 130 / 143, stopped by SIGINT /
SIGTERM where the same command continues. Each refusal is one line (docs/bad-inputs.md).
Rank 0 writes run.json beside log.txt: what made the run, and its results (tools/provenance.py).
"""
import contextlib
import os
import os.path as osp
import re
import shlex
import sys

import torch

import clip
import plugins
from clip import CLIPWeightsError
from clip.prompting import PromptTooLong
from dassl.config import ConfigError, check_cfg, get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY
from dassl.engine import TRAINER_REGISTRY, TrainingInterrupted, build_trainer
from dassl.utils import CheckpointError, check_availability, collect_env_info, set_random_seed, setup_logger
from dassl.utils.distributed import (
    destroy_distributed,
    get_rank,
    init_distributed,
    is_main_process,
    main_process_first,
)
from dassl.utils.runlock import IN_USE_EXIT_CODE, FolderInUse, RunLock
from datasets.base import DatasetError
from tools.provenance import RunRecord
from train_args import build_parser as build_args_parser
from train_args import reset_cfg
from trainers.common import BackboneMismatch, check_input_size

# Bad input a user can fix: reported as one message (set MUPL_TRACEBACK=1 for the traceback).
USER_ERRORS = (DatasetError, CLIPWeightsError, CheckpointError, ConfigError, BackboneMismatch, PromptTooLong,
               FolderInUse, OSError)
# Exit codes other than 1: a config value (as argparse's 2), and EX_TEMPFAIL (75) for a folder another
# run holds (sweep tools wait and retry on exactly that code).
EXIT_CODES = {ConfigError: 2, BackboneMismatch: 2, PromptTooLong: 2, FolderInUse: IN_USE_EXIT_CODE}
# torch re-raises an error of a DataLoader worker with the worker's traceback as its message.
WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def build_parser():
    return build_args_parser(__doc__)


def setup_cfg(args, modules):
    """defaults -> plugins' keys -> dataset YAML -> trainer YAML -> flags -> KEY VALUE opts."""
    cfg = get_cfg_default()
    plugins.extend_cfg(cfg, modules)
    if args.dataset_config_file:
        cfg.merge_from_file(args.dataset_config_file)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def check_request(cfg, args):
    """Everything that can be refused before a log file or folder is written: the one place a config is
    validated (ValueError: exit 2), then the trainer's own ``validate_cfg(cfg)`` when it has one."""
    check_availability(cfg.TRAINER.NAME, TRAINER_REGISTRY.registered_names())
    check_availability(cfg.DATASET.NAME, DATASET_REGISTRY.registered_names())
    trainer_class = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if args.eval_only and not args.model_dir and getattr(trainer_class, "LEARNS_WEIGHTS", True):
        raise ValueError("--eval-only needs --model-dir (the output folder of the training run)")
    check_cfg(cfg, training=not (args.eval_only or args.no_train))
    resolution = clip.input_resolution(cfg.MODEL.BACKBONE.NAME)
    if resolution is not None:
        check_input_size(cfg, resolution, cfg.MODEL.BACKBONE.NAME)
    validate_cfg = getattr(trainer_class, "validate_cfg", None)
    if validate_cfg is not None:
        validate_cfg(cfg)


def hold_run_folder(folder):
    """The lock on the output folder, held for the whole run: a second run into it is refused
    (FolderInUse) instead of mixing its logs and checkpoints in."""
    if osp.exists(folder) and not osp.isdir(folder):
        raise OSError(f"The output path {folder} is a file, not a folder: choose another --output-dir")
    try:
        return RunLock(folder, shlex.join(sys.argv)).acquire()
    except FolderInUse as error:
        raise FolderInUse(f"{error}; wait for it to finish, or choose another --output-dir") from None
    except OSError as error:
        raise OSError(f"Cannot write into the output folder {folder} ({error.strerror or error}): make it "
                      "writable, free space, or choose another --output-dir") from error


def one_line(error):
    """The message a user reads: for an error inside a DataLoader worker, the original error's own
    message rather than torch's wrapper around the worker's traceback."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if WORKER_ERROR.match(text):
        lines = text.rstrip().splitlines()
        own = re.compile(rf"(?:[\w.]+\.)?{re.escape(type(error).__name__)}: ")
        starts = [index for index, line in enumerate(lines) if own.match(line)]
        if starts:
            text = "\n".join(lines[starts[-1]:]).split(": ", 1)[1]
    return text


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__):
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def main(args):
    modules = plugins.import_plugins()
    try:
        cfg = setup_cfg(args, modules)
        check_request(cfg, args)
    except (KeyError, ValueError, FileNotFoundError, AssertionError) as error:
        print(f"train.py: error: {one_line(error)}", file=sys.stderr)
        return 2

    distributed = init_distributed(cfg.USE_CUDA)
    logger = None
    try:
        with contextlib.ExitStack() as held:
            if is_main_process():
                held.callback(hold_run_folder(cfg.OUTPUT_DIR).release)
            else:
                sys.stdout = open(os.devnull, "w")  # under torchrun only rank 0 prints and keeps log.txt
            logger = start_log(cfg, args)
            record = RunRecord(cfg, args, write=is_main_process())
            run(cfg, args, record)
            record.finish()
    except TrainingInterrupted as stop:  # the trainer said where it stopped and how to continue
        return stop.code
    except KeyboardInterrupt:
        print("Interrupted (Ctrl-C); rerun the same command to continue")
        return 130
    except USER_ERRORS as error:
        if os.environ.get("MUPL_TRACEBACK"):
            raise
        message = f"train.py: error: {one_line(error)}"
        if logger is not None:
            logger.write_to_file(message)
        rank = f"[rank {get_rank()}] " if distributed else ""
        print(rank + message, file=sys.stderr)
        return next((code for kind, code in EXIT_CODES.items() if isinstance(error, kind)), 1)
    destroy_distributed()
    return 0


def start_log(cfg, args):
    """Seed, open log.txt (rank 0) and print the run's provenance; returns the logger (or None)."""
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    logger = setup_logger(cfg.OUTPUT_DIR) if is_main_process() else None
    torch.backends.cudnn.benchmark = False
    print_args(args, cfg)
    if is_main_process():
        print("Collecting env info ...")
        print(f"** System info **\n{collect_env_info()}\n")
    return logger


def run(cfg, args, record):
    """Build, then train or evaluate; run.json (``record``) gets what was built and each phase's time."""
    with record.phase("build"), main_process_first():  # rank 0 alone downloads CLIP, writes dataset caches
        trainer = build_trainer(cfg)
    record.built(trainer, cfg)
    if args.eval_only:
        try:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
        except RuntimeError as error:  # weights of another trainer or backbone
            raise CheckpointError(str(error)) from error
        with record.phase("evaluate"):
            trainer.test()
    elif not args.no_train:
        with record.phase("train"):   # the final test included
            trainer.train()


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
