"""Fault injection through train.py: a MuPL run killed at random iterations, rerun, ends bit-identical.

Every run is the command a user types (a subprocess of train.py on a tiny random CLIP and a fake
Oxford Pets tree). The uninterrupted run is the reference; each scenario interrupts the same command
at iterations drawn from a seeded ``random.Random`` (the log prints every iteration), reruns it until
it finishes, and compares the last checkpoint's prompt tensors and optimizer state (``torch.equal``)
and the final test result with the reference. Every iteration any run prints must also show the
reference's loss and learning rate for that iteration, so a divergence is caught where it starts.

The iterations are read from the log as it is printed (TRAIN.PRINT_FREQ 1, PYTHONUNBUFFERED=1). Seven
train.py processes in all, each mostly start-up (about 10 s of CPU); the three independent sequences
(reference, SIGKILL chain, SIGTERM) run side by side, so on 2 cores the file takes about a minute.
"""
import os
import random
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from clip.tiny import save_tiny_clip
from tests.fake_trees import make_fake_oxford_pets

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
SHOTS = 3
N_CLASSES = 4
BATCHES = SHOTS * N_CLASSES  # batch size 1 (the MuPL recipe): 12 iterations an epoch
ITERATIONS = EPOCHS * BATCHES
RUN_TIMEOUT = 120
ITERATION_LINE = re.compile(
    r"^epoch \[(\d+)/(\d+)\] batch \[(\d+)/(\d+)\] .* loss ([\d.]+) \([\d.]+\) .* lr (\S+) eta"
)
RESULT_BLOCK = re.compile(r"=> result\n(?:\* \w+: .*\n)+")
CKPT_DIR = "prompt_learner"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault")
    make_fake_oxford_pets(root / "data", n_classes=N_CLASSES)
    save_tiny_clip(str(root / "tiny_vit.pt"), arch="vit", seed=0)
    return root


def command(bench, out):
    return [
        sys.executable, str(REPO / "train.py"), "--root", str(bench / "data"), "--seed", "1",
        "--trainer", "MuPL",
        "--dataset-config-file", str(REPO / "configs/datasets/oxford_pets.yaml"),
        "--config-file", str(REPO / "configs/trainers/MuPL/vit_b16_c4_ep10_batch1_ctxv1.yaml"),
        "--output-dir", str(out),
        "MODEL.BACKBONE.NAME", str(bench / "tiny_vit.pt"), "INPUT.SIZE", "(32, 32)",
        "DATASET.NUM_SHOTS", str(SHOTS), "OPTIM.MAX_EPOCH", str(EPOCHS),
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "32",
        "TRAIN.PRINT_FREQ", "1", "TRAIN.CHECKPOINT_FREQ", "1",
    ]


class Run:
    """One train.py process; its output, the iterations it printed and how it ended."""

    def __init__(self, bench, out, stop_at=None, sig=None):
        self.stop_at, self.sig = stop_at, sig
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            command(bench, out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        self.lines, self.iterations, self.signalled = [], {}, False
        watchdog = threading.Timer(RUN_TIMEOUT, self.process.kill)
        watchdog.start()
        try:
            for line in self.process.stdout:
                self.lines.append(line)
                self.read_iteration(line)
            self.returncode = self.process.wait()
        finally:
            watchdog.cancel()
        self.output = "".join(self.lines)

    def read_iteration(self, line):
        match = ITERATION_LINE.match(line)
        if not match:
            return
        epoch, max_epoch, batch, num_batches = map(int, match.group(1, 2, 3, 4))
        assert (max_epoch, num_batches) == (EPOCHS, BATCHES), line
        step = (epoch - 1) * BATCHES + batch
        self.iterations.setdefault(step, []).append((match.group(5), match.group(6)))
        if self.stop_at is not None and step >= self.stop_at and not self.signalled:
            self.signalled = True
            self.process.send_signal(self.sig)

    @property
    def last_iteration(self):
        return max(self.iterations, default=0)

    def describe(self):
        return f"exit {self.returncode}; last lines:\n{''.join(self.lines[-15:])}"


def result_block(output):
    blocks = RESULT_BLOCK.findall(output)
    assert blocks, f"no final test result in:\n{output[-2000:]}"
    return blocks[-1]


def checkpoint(out, epoch=EPOCHS):
    return torch.load(out / CKPT_DIR / f"model.pth.tar-{epoch}", weights_only=True)


def assert_equal_states(ref, got, where="checkpoint"):
    """Nested dicts/lists of tensors and plain values, tensors compared with ``torch.equal``."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(got, torch.Tensor) and ref.dtype == got.dtype, where
        assert torch.equal(ref, got), f"{where} differs from the uninterrupted run"
    elif isinstance(ref, dict):
        assert set(ref) == set(got), where
        for key in ref:
            assert_equal_states(ref[key], got[key], f"{where}[{key!r}]")
    elif isinstance(ref, (list, tuple)):
        assert len(ref) == len(got), where
        for index, (a, b) in enumerate(zip(ref, got)):
            assert_equal_states(a, b, f"{where}[{index}]")
    else:
        assert ref == got, where


def assert_iterations_match(reference, runs):
    """Every iteration any of the runs printed has the reference's loss and learning rate."""
    for run in runs:
        for step, seen in run.iterations.items():
            for loss_lr in seen:
                assert loss_lr == reference["iterations"][step][0], (
                    f"iteration {step} (epoch {(step - 1) // BATCHES + 1}, batch {(step - 1) % BATCHES + 1}) "
                    f"printed loss/lr {loss_lr}, the uninterrupted run {reference['iterations'][step][0]}"
                )


def assert_same_as_reference(reference, out, final_run):
    got = checkpoint(out)
    assert set(got["state_dict"]) == set(reference["checkpoint"]["state_dict"])
    assert any(name.startswith("ctx") for name in got["state_dict"])
    assert_equal_states(reference["checkpoint"]["state_dict"], got["state_dict"], "state_dict")
    assert_equal_states(reference["checkpoint"]["optimizer"], got["optimizer"], "optimizer")
    assert_equal_states(reference["checkpoint"]["scheduler"], got["scheduler"], "scheduler")
    assert result_block(final_run.output) == reference["result"]
    assert not (out / CKPT_DIR / "model-resume.pth.tar").exists()


def rerun_until_finished(bench, out, runs, limit=3):
    for _ in range(limit):
        run = Run(bench, out)
        runs.append(run)
        if run.returncode == 0:
            return run
    raise AssertionError(f"no rerun finished: {runs[-1].describe()}")


def resumed_epoch(run):
    """The completed epoch a rerun restarted from (0: from scratch), as its log says."""
    if "No checkpoint found, train from scratch" in run.output:
        return 0
    match = re.search(r"^Resumed from epoch (\d+)$", run.output, re.MULTILINE)
    assert match, run.describe()
    return int(match.group(1))


def run_reference(bench):
    out = bench / "reference"
    run = Run(bench, out)
    assert run.returncode == 0, run.describe()
    assert sorted(run.iterations) == list(range(1, ITERATIONS + 1))
    return {"iterations": run.iterations, "result": result_block(run.output), "checkpoint": checkpoint(out)}


def run_sigkill_chain(bench):
    """The same command SIGKILLed once in each epoch at an iteration drawn at random, rerun in between;
    after the last kill (in epoch 3) the newest checkpoint, model.pth.tar-2, is cut to half its size as a
    write torn by a crash would leave it, and the command is rerun until it finishes.
    """
    draw = random.Random(0)
    # Any batch of epochs 1 and 2 (after the last one, the kill lands about when the epoch checkpoint
    # is written); in epoch 3 one before its end, so that model.pth.tar-2 is the newest file.
    targets = [epoch * BATCHES + draw.randint(1, BATCHES if epoch < EPOCHS - 1 else BATCHES - 2)
               for epoch in range(EPOCHS)]
    out = bench / "sigkill"
    runs = []
    for target in targets:
        run = Run(bench, out, stop_at=target, sig=signal.SIGKILL)
        runs.append(run)
        assert run.signalled, f"never reached iteration {target}: {run.describe()}"
        assert run.returncode == -signal.SIGKILL, run.describe()
    print(f"SIGKILL targets {targets}; last iterations printed {[run.last_iteration for run in runs]}")

    assert runs[-1].last_iteration > 2 * BATCHES
    newest = max((out / CKPT_DIR).glob("model*.pth.tar*"), key=lambda path: path.stat().st_mtime_ns)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    killed = list(runs)
    final = rerun_until_finished(bench, out, runs)
    return {"out": out, "killed": killed, "runs": runs, "final": final, "torn": newest}


def run_sigterm(bench):
    target = random.Random(3).randint(1, ITERATIONS - 3)  # the handler lives while training runs
    out = bench / "sigterm"
    first = Run(bench, out, stop_at=target, sig=signal.SIGTERM)
    second = Run(bench, out) if first.returncode == 128 + signal.SIGTERM else None
    return {"out": out, "target": target, "first": first, "second": second}


SCENARIOS = {"reference": run_reference, "sigkill": run_sigkill_chain, "sigterm": run_sigterm}


@pytest.fixture(scope="module")
def scenarios(bench):
    """The three independent command sequences at once: each train.py uses one core (OMP_NUM_THREADS=1),
    and CPU results do not depend on what else runs. A scenario's failure surfaces in its own tests."""
    with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
        return {name: pool.submit(run, bench) for name, run in SCENARIOS.items()}


@pytest.fixture
def reference(scenarios):
    return scenarios["reference"].result()


@pytest.fixture
def sigkill_chain(scenarios):
    return scenarios["sigkill"].result()


@pytest.fixture
def sigterm(scenarios):
    return scenarios["sigterm"].result()


def test_sigkill_at_random_iterations_then_reruns_end_bit_identical(reference, sigkill_chain):
    runs, killed_runs = sigkill_chain["runs"], sigkill_chain["killed"]
    # The rerun after the last kill finds a torn file: the next test looks at it.
    for killed, rerun in zip(killed_runs[:-1], runs[1:len(killed_runs)]):
        # Back to the last epoch checkpoint written before the kill: that of the epoch before the
        # last printed iteration, or of its own epoch when the kill came right after its last batch.
        killed_epoch = (killed.last_iteration - 1) // BATCHES + 1
        assert resumed_epoch(rerun) in (killed_epoch - 1, killed_epoch), rerun.describe()
        assert min(rerun.iterations) == resumed_epoch(rerun) * BATCHES + 1
    assert any(resumed_epoch(run) > 0 for run in runs[1:])
    assert_iterations_match(reference, runs)
    assert_same_as_reference(reference, sigkill_chain["out"], sigkill_chain["final"])


def test_torn_newest_checkpoint_warns_and_falls_back_to_the_previous_one(reference, sigkill_chain):
    torn, folder = sigkill_chain["torn"], sigkill_chain["out"] / CKPT_DIR
    assert torn.name == "model.pth.tar-2"
    rerun = sigkill_chain["runs"][len(sigkill_chain["killed"])]
    assert rerun.returncode == 0, rerun.describe()
    warning = [line for line in rerun.lines if "is truncated or corrupt" in line]
    assert warning and str(torn) in warning[0] and "trying the previous checkpoint" in warning[0], \
        rerun.describe()
    assert f'Loading checkpoint from "{folder / "model.pth.tar-1"}"' in rerun.output
    assert resumed_epoch(rerun) == 1
    assert min(rerun.iterations) == BATCHES + 1
    assert_iterations_match(reference, [rerun])
    assert_same_as_reference(reference, sigkill_chain["out"], rerun)


def test_sigterm_at_a_random_iteration_then_rerun_ends_bit_identical(reference, sigterm):
    out, target, first, second = sigterm["out"], sigterm["target"], sigterm["first"], sigterm["second"]
    assert first.returncode == 128 + signal.SIGTERM, first.describe()
    stopped = re.search(r"Interrupted by signal 15 at epoch (\d+), batch (\d+); "
                        r"rerun the same command to resume", first.output)
    assert stopped, first.describe()
    epoch, batch = map(int, stopped.groups())
    print(f"SIGTERM target {target}; stopped after epoch {epoch}, batch {batch}")
    assert (epoch - 1) * BATCHES + batch == first.last_iteration >= target
    assert second.returncode == 0, second.describe()
    assert f"Loading checkpoint from \"{out / CKPT_DIR / 'model-resume.pth.tar'}\"" in second.output
    assert f"Resumed from epoch {epoch}, iteration {batch}" in second.output
    assert min(second.iterations, default=epoch * BATCHES + 1) == first.last_iteration + 1
    assert_iterations_match(reference, [first, second])
    assert_same_as_reference(reference, out, second)
