"""Dassl's trainer hierarchy: TrainerBase (bookkeeping), SimpleTrainer (loop, test), TrainerX (epoch).

Beyond Dassl: every epoch end leaves a resumable checkpoint, SIGTERM/SIGINT stop training after the
current iteration with a checkpoint (an evaluation, after the current batch), and a checkpoint carries
every random state, so a rerun of the same command continues bit-identically on the CPU. Under torchrun
(see dassl/utils/distributed.py) training runs through DistributedDataParallel on a shard of the data per
process, evaluation is sharded and gathered, and only rank 0 writes checkpoints and tensorboard.
"""
import contextlib
import datetime
import glob
import os
import os.path as osp
import re
import signal
import time
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

from dassl.data import DataManager
from dassl.evaluation import build_evaluator
from dassl.utils import (
    AverageMeter,
    CheckpointError,
    MetricMeter,
    capture_rng_state,
    check_checkpoint,
    load_checkpoint,
    load_optimizer_and_scheduler,
    mkdir_if_missing,
    restore_rng_state,
    save_checkpoint,
    tolist_if_not,
)
from dassl.utils.distributed import (
    barrier,
    broadcast_object,
    get_world_size,
    is_distributed,
    is_main_process,
    local_rank,
    max_over_ranks,
)
from dassl.utils.scalar_writer import ScalarWriter

from .distributed import DistributedModel, check_trainable_inside, gather_in_dataset_order

RESUME_FILE = "model-resume.pth.tar"
EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")
STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def missing_model_message(model_path):
    """Name the file and list the epochs that do exist beside it."""
    folder = osp.dirname(model_path)
    if not osp.isdir(folder):
        return f'Model not found at "{model_path}": {folder} does not exist (train first, or fix --model-dir)'
    epochs = sorted(int(m.group(1)) for m in map(EPOCH_FILE.match, os.listdir(folder)) if m)
    return f'Model not found at "{model_path}"; saved epochs there: {epochs or "none"} (see --load-epoch)'


class TrainingInterrupted(SystemExit):
    """Raised when a signal stops a run (after the interrupt checkpoint of a training step, or within an
    evaluation); its code is the shell's 128 + signal."""


class TrainerBase:
    """Registered models with their optimisers and schedulers, and the epoch loop skeleton."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None
        self.scaler = None
        self._resume_state = None
        self._stop_signal = None

    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if name in self._models:
            raise KeyError(f'A model named "{name}" is already registered')
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = tolist_if_not(names)
        for name in names:
            if name not in names_real:
                raise KeyError(f'No model named "{name}"; registered: {names_real}')
        return names

    # --- checkpoints ------------------------------------------------------------------------------
    def _checkpoint_state(self, name, epoch, val_result, iteration, epoch_rng_state):
        sched = self._scheds[name]
        optim = self._optims[name]
        return {
            "state_dict": self._models[name].state_dict(),
            "epoch": epoch,
            "optimizer": optim.state_dict() if optim is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            "val_result": val_result,
            "iteration": iteration,
            "rng_state": capture_rng_state(),
            "epoch_rng_state": epoch_rng_state,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "meta": self.checkpoint_meta(),
            "trainer_state": self.trainer_state(),
        }

    def trainer_state(self):
        """Training state outside the registered models that an exact resume needs (tensors and plain
        values), e.g. a running average of the prompts; None when there is none."""
        return None

    def load_trainer_state(self, state):
        """Restore what ``trainer_state`` returned."""

    def checkpoint_meta(self):
        """Plain facts about the run, so a checkpoint used in the wrong place can be recognised."""
        return {}

    def check_checkpoint_meta(self, meta, path):
        """Refuse a checkpoint of another trainer; say so when the class set changed."""
        mine = self.checkpoint_meta()
        if not meta or not mine:
            return
        if meta.get("trainer") != mine.get("trainer"):
            raise CheckpointError(
                f'{path} was written by trainer {meta.get("trainer")}, but this run is {mine.get("trainer")}: '
                "point --model-dir / --resume at a run of the same trainer"
            )
        if meta.get("backbone") != mine.get("backbone"):
            print(f'Warning: {path} was trained with backbone {meta.get("backbone")}, this run uses '
                  f'{mine.get("backbone")}')
        if (meta.get("dataset"), meta.get("num_classes")) != (mine.get("dataset"), mine.get("num_classes")):
            print(f'Note: the model in {path} was trained on {meta.get("dataset")} '
                  f'({meta.get("num_classes")} classes, {meta.get("subsample")}); this run evaluates on '
                  f'{mine.get("dataset")} ({mine.get("num_classes")} classes, {mine.get("subsample")})')

    def load_state_into(self, name, state_dict, path):
        """``load_state_dict`` with a message naming the file and every key that does not fit."""
        try:
            result = self._models[name].load_state_dict(state_dict, strict=False)
        except RuntimeError as error:  # shapes that differ
            raise CheckpointError(f"{path} does not fit model {name!r} of this run (another trainer, backbone "
                                  f"or config?): {' '.join(str(error).split())}") from error
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{path} does not fit model {name!r} of this run (another trainer, backbone or config?): "
                f"missing keys {sorted(result.missing_keys)}; unexpected keys {sorted(result.unexpected_keys)}"
            )

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name="",
                   iteration=0, epoch_rng_state=None):
        """Dassl's layout: ``directory/<name>/<model_name>``; ``epoch`` is 0-based as in Dassl."""
        completed = epoch + 1 if iteration == 0 else epoch
        if is_main_process():
            for name in self.get_model_names():
                save_checkpoint(
                    self._checkpoint_state(name, completed, val_result, iteration, epoch_rng_state),
                    osp.join(directory, name),
                    is_best=is_best,
                    model_name=model_name,
                )
        barrier()  # no process reads a checkpoint before rank 0 has written it

    def _checkpoint_candidates(self, fdir):
        """The pointer's file first, then the resume file, then epoch files newest first."""
        candidates = []
        pointer = osp.join(fdir, "checkpoint")
        if osp.isfile(pointer):
            with open(pointer) as handle:
                named = handle.read().strip()
            if named and named == osp.basename(named) and named not in (".", ".."):
                candidates.append(osp.join(fdir, named))
            elif named:
                print(f"Warning: ignoring {pointer}: it names {named!r}, which is not a file of that folder")
        candidates.append(osp.join(fdir, RESUME_FILE))
        epoch_files = []
        for path in glob.glob(osp.join(fdir, "model.pth.tar-*")):
            match = EPOCH_FILE.match(osp.basename(path))
            if match:
                epoch_files.append((int(match.group(1)), path))
        candidates.extend(path for _, path in sorted(epoch_files, reverse=True))
        unique = []
        for path in candidates:
            if osp.isfile(path) and path not in unique:
                unique.append(path)
        return unique

    def _load_latest_checkpoint(self, fdir):
        for path in self._checkpoint_candidates(fdir):
            try:
                return path, check_checkpoint(load_checkpoint(path), path)
            except CheckpointError as error:
                print(f"Warning: {error}; trying the previous checkpoint")
        return None, None

    def resume_model_if_exist(self, directory):
        """Restore every registered model from its newest good checkpoint; return the start epoch."""
        names = self.get_model_names()
        if not all(osp.isdir(osp.join(directory, name)) for name in names):
            print("No checkpoint found, train from scratch")
            return 0
        loaded = {}
        for name in names:
            path, checkpoint = self._load_latest_checkpoint(osp.join(directory, name))
            if checkpoint is None:
                print("No checkpoint found, train from scratch")
                return 0
            loaded[name] = (path, checkpoint)

        for name, (path, checkpoint) in loaded.items():
            print(f'Loading checkpoint from "{path}"')
            self.check_checkpoint_meta(checkpoint.get("meta"), path)
            self.load_state_into(name, checkpoint["state_dict"], path)
            load_optimizer_and_scheduler(checkpoint, path, self._optims[name], self._scheds[name])
        checkpoint = next(iter(loaded.values()))[1]
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint.get("trainer_state") is not None:
            self.load_trainer_state(checkpoint["trainer_state"])
        iteration = checkpoint.get("iteration", 0)
        if checkpoint.get("rng_state") is not None:
            if iteration:
                self._resume_state = {
                    "iteration": iteration,
                    "rng_state": checkpoint["rng_state"],
                    "epoch_rng_state": checkpoint["epoch_rng_state"],
                }
            else:
                restore_rng_state(checkpoint["rng_state"])
        start_epoch = checkpoint["epoch"]
        where = f"epoch {start_epoch + 1}, iteration {iteration}" if iteration else f"epoch {start_epoch}"
        print(f"Resumed from {where}")
        return start_epoch

    def _prune_epoch_checkpoints(self, directory, keep_last):
        if keep_last <= 0 or not is_main_process():
            return
        for name in self.get_model_names():
            files = []
            for path in glob.glob(osp.join(directory, name, "model.pth.tar-*")):
                match = EPOCH_FILE.match(osp.basename(path))
                if match:
                    files.append((int(match.group(1)), path))
            for _, path in sorted(files)[:-keep_last]:
                os.remove(path)

    def load_model(self, directory, epoch=None):
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(missing_model_message(model_path))
            checkpoint = check_checkpoint(load_checkpoint(model_path), model_path)
            self.check_checkpoint_meta(checkpoint.get("meta"), model_path)
            val_result = checkpoint.get("val_result")
            suffix = f", val_result = {val_result:.1f}" if val_result is not None else ""
            print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]}{suffix})')
            self.load_state_into(name, checkpoint["state_dict"], model_path)

    # --- modes and updates ------------------------------------------------------------------------
    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f"Unknown mode {mode!r}")

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def init_writer(self, log_dir):
        if self._writer is not None:
            return
        try:
            self._writer = ScalarWriter(log_dir)
        except ImportError:
            print("Note: tensorboard is not installed; no scalars are written")
            return
        print(f"Initialize tensorboard (log_dir={log_dir})")

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    # --- loop -------------------------------------------------------------------------------------
    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """One model, one data manager, one evaluator; the trainer a CoOp-family method subclasses."""

    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda", local_rank()) if is_distributed() else torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg):
        """Subclasses assert the config keys they need."""

    def checkpoint_meta(self):
        return {
            "trainer": self.cfg.TRAINER.NAME,
            "backbone": self.cfg.MODEL.BACKBONE.NAME,
            "dataset": self.cfg.DATASET.NAME,
            "subsample": self.cfg.DATASET.get("SUBSAMPLE_CLASSES", "all"),
            "num_classes": self.num_classes,
        }

    def build_data_loader(self):
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        raise NotImplementedError("A trainer builds its own model (Dassl's SimpleNet is not carried)")

    def train(self):
        """Train with SIGTERM/SIGINT turned into a checkpoint at the end of the current iteration."""
        with self._stop_signals_recorded():
            super().train(self.start_epoch, self.max_epoch)

    @contextlib.contextmanager
    def _stop_signals_recorded(self):
        """SIGTERM/SIGINT only note the request; the loops stop where the run can be continued. DataLoader
        workers forked inside inherit the handler, so Ctrl-C on the terminal does not kill them."""
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_stop(self, signum, frame):
        self._stop_signal = signum

    def _stop_requested(self):
        """Under torchrun every process stops at the same iteration, when any of them got a signal."""
        if is_distributed():
            self._stop_signal = max_over_ranks(self._stop_signal or 0) or None
        return self._stop_signal is not None

    def before_train(self):
        directory = self.cfg.RESUME or self.cfg.OUTPUT_DIR
        self.start_epoch = self.resume_model_if_exist(directory)
        if is_distributed():
            self._distribute_model()
        if is_main_process():
            writer_dir = osp.join(self.output_dir, "tensorboard")
            mkdir_if_missing(writer_dir)
            self.init_writer(writer_dir)
        self.time_start = time.time()

    def _distribute_model(self):
        """Route the training calls of ``self.model`` through DDP (after resuming: DDP starts every
        process from rank 0's weights). A model without trainable parameters needs no DDP."""
        registered = {name: self._models[name] for name in self.get_model_names()}
        if not any(p.requires_grad for module in registered.values() for p in module.parameters()):
            return
        model = getattr(self, "model", None)
        check_trainable_inside(model, registered)
        self.model = DistributedModel(model, self.device)

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = (self.epoch + 1) % freq == 0 if freq > 0 else False

        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result,
                                model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)
            self._prune_epoch_checkpoints(self.output_dir, self.cfg.TRAIN.KEEP_LAST)
            self._remove_resume_files()  # superseded: a fallback must never prefer it to this epoch
        else:
            self.save_model(self.epoch, self.output_dir, model_name=RESUME_FILE)

    def _remove_resume_files(self):
        if not is_main_process():
            return
        for name in self.get_model_names():
            path = osp.join(self.output_dir, name, RESUME_FILE)
            if osp.exists(path):
                os.remove(path)

    def save_interrupted(self, epoch_rng_state):
        """The state after the current iteration, so a rerun continues exactly here."""
        self.save_model(self.epoch, self.output_dir, model_name=RESUME_FILE,
                        iteration=self.batch_idx + 1, epoch_rng_state=epoch_rng_state)
        code = STOP_SIGNALS.get(self._stop_signal, 1)
        print(
            f"Interrupted by signal {self._stop_signal} at epoch {self.epoch + 1}, "
            f"batch {self.batch_idx + 1}; rerun the same command to resume"
        )
        self.close_writer()
        raise TrainingInterrupted(code)

    def after_train(self):
        print("Finish training")
        do_test = not self.cfg.TEST.NO_TEST
        if do_test:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        print(f"Elapsed: {elapsed}")
        self.close_writer()

    @torch.no_grad()
    def test(self, split=None):
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        print(f"Evaluate on the *{split}* set")
        shard = []
        with self._stop_signals_recorded():
            for batch_idx, batch in enumerate(tqdm(data_loader, disable=not is_main_process())):
                input, label = self.parse_batch_test(batch)
                output = self.model_inference(input)
                if is_distributed():
                    shard.append((output.cpu(), label.cpu()))
                else:
                    self.evaluator.process(output, label)
                if self._stop_signal is not None:  # no collective: every process stops on its own signal
                    self._stop_evaluation(split, batch_idx + 1, len(data_loader))
        if is_distributed():
            results = self._evaluate_shards(shard, data_loader.batch_size)
        else:
            results = self.evaluator.evaluate()
        for key, value in results.items():
            self.write_scalar(f"{split}/{key}", value, self.epoch)
        return list(results.values())[0]

    def _stop_evaluation(self, split, batches_done, num_batches):
        """Nothing of an evaluation is kept: a rerun of the same command evaluates again (a training run
        resumes from its last checkpoint, so a finished training is not repeated)."""
        print(f"Interrupted by signal {self._stop_signal} during the evaluation on the *{split}* set, after "
              f"batch {batches_done} of {num_batches}; rerun the same command to evaluate again")
        self.close_writer()
        raise TrainingInterrupted(STOP_SIGNALS.get(self._stop_signal, 1))

    def _evaluate_shards(self, shard, batch_size):
        """Rank 0 feeds the evaluator every process's outputs, in dataset order and in batches as one
        process would, so the ``=> result`` block counts each image once; all ranks get the results."""
        gathered = gather_in_dataset_order(shard, get_world_size())
        results = None
        if gathered is not None:
            outputs, labels = gathered
            for start in range(0, len(labels), batch_size):
                self.evaluator.process(outputs[start : start + batch_size], labels[start : start + batch_size])
            results = self.evaluator.evaluate()
        return broadcast_object(results)

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None):
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """A trainer on labelled data only: one pass over ``train_loader_x`` per epoch."""

    def _start_epoch_iterator(self):
        """The loader iterator, positioned where an interrupted run stopped (or at the start)."""
        resume = self._resume_state
        self._resume_state = None
        if resume is None:
            epoch_rng_state = capture_rng_state()
            return iter(self.train_loader_x), 0, epoch_rng_state
        restore_rng_state(resume["epoch_rng_state"])
        loader_iter = iter(self.train_loader_x)
        for _ in range(resume["iteration"]):
            next(loader_iter)
        restore_rng_state(resume["rng_state"])
        return loader_iter, resume["iteration"], resume["epoch_rng_state"]

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        if hasattr(self.train_loader_x.sampler, "set_epoch"):  # torchrun: this epoch's shuffle of the shards
            self.train_loader_x.sampler.set_epoch(self.epoch)
        loader_iter, first_batch, epoch_rng_state = self._start_epoch_iterator()

        end = time.time()
        for self.batch_idx in range(first_batch, self.num_batches):
            batch = next(loader_iter)
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)

            meet_freq = (self.batch_idx + 1) % self.cfg.TRAIN.PRINT_FREQ == 0
            only_few_batches = self.num_batches < self.cfg.TRAIN.PRINT_FREQ
            if meet_freq or only_few_batches:
                nb_remain = self.num_batches - self.batch_idx - 1
                nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                info = [
                    f"epoch [{self.epoch + 1}/{self.max_epoch}]",
                    f"batch [{self.batch_idx + 1}/{self.num_batches}]",
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
                    f"data {data_time.val:.3f} ({data_time.avg:.3f})",
                    f"{losses}",
                    f"lr {self.get_current_lr():.4e}",
                    f"eta {eta}",
                ]
                print(" ".join(info))

            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            if self._stop_requested():
                self.save_interrupted(epoch_rng_state)
            end = time.time()

    def parse_batch_train(self, batch):
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain
