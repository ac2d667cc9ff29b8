"""tools.sweep with the local launcher: the real scripts on a fake Oxford Pets tree, a tiny CLIP, 2 CPU slots."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from clip.tiny import save_tiny_clip
from dassl.utils.runlock import RunLock
from parse_test_res import read_run_result
from tests.fake_trees import make_fake_oxford_pets
from tools.sweep import cli
from tools.sweep.estimate import PUBLISHED_SECONDS_PER_IMAGE, TEST_IMAGE_SHARE, Estimator
from tools.sweep.jobs import Job, Settings, SweepError
from tools.sweep.ledger import Ledger
from tools.sweep.local import LocalQueue, slots_for
from tools.sweep.progress import DONE

REPO = Path(__file__).resolve().parents[1]
CFG = "vit_b16_c4_ep10_batch1_ctxv1"
EPOCHS = 20     # 80 steps: with one thread a run is fast, and a SIGTERM must land mid-training


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    make_fake_oxford_pets(root / "data")           # no dtd: its jobs fail for a real reason
    tiny = root / "tiny_vit.pt"
    save_tiny_clip(str(tiny), arch="vit", seed=0)
    opts = ["MODEL.BACKBONE.NAME", str(tiny), "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", str(EPOCHS),
            "TRAIN.CHECKPOINT_FREQ", "1", "TRAIN.KEEP_LAST", "2", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TEST.BATCH_SIZE", "32"]
    return root, opts


def environment(root, output):
    return dict(os.environ, DATA=str(root / "data"), OUTPUT=str(output), SHOTS="2", PYTHON=sys.executable)


def sweep_args(opts, datasets=("oxford_pets",), *extra):
    return ["base2new", "--trainers", "CoCoOp", "--datasets", *datasets, "--seeds", "1", "--slots", "2",
            *extra, *opts]


def run_dir(output, split, dataset="oxford_pets"):
    return output / "base2new" / split / dataset / "shots_2" / "CoCoOp" / CFG / "seed1"


def sweep_in_process(monkeypatch, capsys, root, output, args):
    """python -m tools.sweep ARGS, in this process (the slow subprocess start is only paid where needed)."""
    for key, value in environment(root, output).items():
        monkeypatch.setenv(key, value)
    code = cli.main(args)
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def first_sweep(inputs):
    """One sweep over oxford_pets (trains, then tests) and dtd (no data: its training fails)."""
    root, opts = inputs
    output = root / "output"
    result = subprocess.run([sys.executable, "-m", "tools.sweep", *sweep_args(opts, ("oxford_pets", "dtd"))],
                            cwd=REPO, env=environment(root, output), capture_output=True, text=True, timeout=300)
    return output, result


def test_jobs_run_two_at_a_time_after_their_dependencies_and_a_failure_stops_only_its_dependents(first_sweep):
    output, result = first_sweep
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    events = [line for line in out.splitlines() if re.match(r"^(started|finished|FAILED) ", line)]
    position = {line.split()[0] + " " + line.split()[1]: n for n, line in enumerate(events)}
    pets_train, pets_test = (f"base2new/{split}/oxford_pets/shots_2/CoCoOp/{CFG}/seed1"
                             for split in ("train_base", "test_new"))
    dtd_train, dtd_test = (f"base2new/{split}/dtd/shots_2/CoCoOp/{CFG}/seed1" for split in ("train_base", "test_new"))
    # two slots: both trainings start before anything ends; the test starts after its training finished
    first_end = min(n for n, line in enumerate(events) if not line.startswith("started"))
    assert position[f"started {pets_train}"] < first_end and position[f"started {dtd_train}"] < first_end
    assert position[f"finished {pets_train}"] < position[f"started {pets_test}"]
    assert f"FAILED {dtd_train}" in position and f"started {dtd_test}" not in position
    # the failure is reported with its command and the tail of its log; its test is listed as not run
    failed = out.split("\nFailed:\n")[1]
    assert f"- {dtd_train}: exit code 1" in failed
    assert "bash scripts/base2new_train.sh dtd 1 CoCoOp" in failed
    assert re.search(r"\| train.py: error: Dataset folder .*dtd is missing", failed)
    assert f"- {dtd_test}" in out.split("Not run: a job they need failed:")[1]
    for split in ("train_base", "test_new"):
        assert read_run_result(run_dir(output, split))[0] is not None
    assert "| OxfordPets | CoCoOp (vit_b16_c4_ep10_batch1_ctxv1, shots_2) |" in out   # tools.report at the end


def test_a_second_sweep_on_a_finished_tree_starts_nothing(first_sweep, inputs, monkeypatch, capsys):
    output, _ = first_sweep
    root, opts = inputs
    logs = sorted((output / "sweep" / "logs").rglob("*.log"))
    before = [log.read_text() for log in logs]
    code, out = sweep_in_process(monkeypatch, capsys, root, output, sweep_args(opts, ("oxford_pets",), "--dry-run"))
    assert code == 0 and "finished (2):" in out and "to start" not in out
    code, out = sweep_in_process(monkeypatch, capsys, root, output, sweep_args(opts))
    assert code == 0
    assert "started" not in out and "== Sweep: 2 finished" in out
    assert [log.read_text() for log in logs] == before        # no job ran, not even to skip


def test_a_held_run_folder_is_neither_started_nor_moved_aside(first_sweep, inputs, monkeypatch, capsys):
    output, _ = first_sweep
    root, opts = inputs
    test_dir = run_dir(output, "test_new")
    with RunLock(str(test_dir), "a colleague's run"):
        code, out = sweep_in_process(monkeypatch, capsys, root, output,
                                     sweep_args(opts, ("oxford_pets",), "--force", "--dry-run"))
        assert code == 0
        held = out.split("held by another process (1):\n")[1].splitlines()[0]
        assert f"in use by process {os.getpid()}" in held and "a colleague's run" in held
        script = subprocess.run(["bash", "scripts/base2new_test.sh", "--force", "oxford_pets", "1", "CoCoOp", *opts],
                                cwd=REPO, env=environment(root, output), capture_output=True, text=True, timeout=60)
    assert script.returncode == 75, script.stdout + script.stderr
    assert f"in use by process {os.getpid()}" in script.stderr and "not touched" in script.stderr
    assert not list(test_dir.parent.glob("seed1.old-*")) and read_run_result(test_dir)[0] is not None


def test_a_stopped_sweep_finishes_on_rerun_with_the_results_of_an_uninterrupted_one(
        first_sweep, inputs, monkeypatch, capsys):
    reference, _ = first_sweep
    root, opts = inputs
    output = root / "output_stopped"
    env = environment(root, output)
    train = run_dir(output, "train_base")
    sweep = subprocess.Popen([sys.executable, "-m", "tools.sweep", *sweep_args(opts)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(train.glob("prompt_learner/model.pth.tar-*")) and time.time() < deadline:
        time.sleep(0.02)
    sweep.send_signal(signal.SIGTERM)
    out = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 128 + signal.SIGTERM, out
    assert f"- base2new/train_base/oxford_pets/shots_2/CoCoOp/{CFG}/seed1: exit code 143" in out, out
    assert "Interrupted by signal 15" in (train / "log.txt").read_text()
    assert subprocess.run(["pgrep", "-f", str(output)], capture_output=True).returncode == 1   # nothing left

    code, plan = sweep_in_process(monkeypatch, capsys, root, output, sweep_args(opts, ("oxford_pets",), "--dry-run"))
    assert "to resume (1):" in plan and "waiting for a dependency (1):" in plan

    rerun = subprocess.run([sys.executable, "-m", "tools.sweep", *sweep_args(opts)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = sorted(train.glob("log.txt-*"))[-1].read_text()
    assert "Resumed from epoch" in resumed and "epoch [1/" not in resumed
    for split in ("train_base", "test_new"):
        assert read_run_result(run_dir(output, split))[0] == read_run_result(run_dir(reference, split))[0]
    final = f"prompt_learner/model.pth.tar-{EPOCHS}"
    weights = torch.load(train / final, weights_only=True)["state_dict"]
    expected = torch.load(run_dir(reference, "train_base") / final, weights_only=True)["state_dict"]
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in weights)


def test_xd_plan_trains_each_seed_on_imagenet_before_its_evaluations(inputs, tmp_path, monkeypatch, capsys):
    root, opts = inputs
    args = ["xd", "--trainers", "CoCoOp", "ZeroshotCLIP", "--datasets", "oxford_pets", "dtd", "--seeds", "1", "2",
            "--dry-run", *opts]
    code, out = sweep_in_process(monkeypatch, capsys, root, tmp_path / "output", args)
    assert code == 0
    starts = out.split("to start (")[1].split("waiting for a dependency")[0]
    assert f"imagenet/CoCoOp/{CFG}_2shots/seed1\n" in starts and f"imagenet/CoCoOp/{CFG}_2shots/seed2\n" in starts
    assert "imagenet/ZeroshotCLIP" not in out                     # nothing to train: evaluated directly
    assert "evaluation/ZeroshotCLIP/vit_b16_2shots/dtd/seed2\n" in starts
    waiting = out.split("waiting for a dependency (4):\n")[1]
    assert (f"evaluation/CoCoOp/{CFG}_2shots/dtd/seed2 (after imagenet/CoCoOp/{CFG}_2shots/seed2)") in waiting


def test_the_estimate_says_where_each_number_comes_from(first_sweep, inputs, monkeypatch, capsys):
    output, _ = first_sweep
    root, opts = inputs
    args = ["base2new", "--trainers", "CoCoOp", "MuPL", "--datasets", "oxford_pets", "caltech101", "--seeds", "1",
            "2", "--dry-run", *opts]
    code, out = sweep_in_process(monkeypatch, capsys, root, output, args)
    assert code == 0
    assert re.search(r"Estimated cost of the 14 jobs to run: [\d.]+ GPU-hours", out)
    assert "  1 jobs: the measured time of finished runs of the same trainer, config and dataset" in out
    assert "  5 jobs: the same trainer's measured time, scaled by dataset size" in out   # other CoCoOp jobs
    assert "  8 jobs: CoCoOp's published cost of 160 ms per training image (docs/results.md)" in out

    # MuPL's base-to-new training on Oxford Pets at the published cost: 2 shots x 19 base classes x 30
    # epochs, and its 3669 test images x 19/37 (the base half) at a third of a training image each
    job = Job("base2new_train.sh", [], "MuPL", CFG, "oxford_pets", 2)
    seconds, source = Estimator([], opts, Settings(environment(root, output), str(output))).seconds(job)
    expected = (2 * 19 * EPOCHS + 3669 * 19 / 37 * TEST_IMAGE_SHARE) * PUBLISHED_SECONDS_PER_IMAGE
    assert source == "published" and seconds == pytest.approx(expected)


class StandInJob(Job):
    """A job whose 'script' is a shell snippet: the queue's own logic, without a training run."""

    def __init__(self, snippet, run_dir, deps=()):
        super().__init__("stand-in", [], "T", "C", "none", 1, run_dir=str(run_dir), name=run_dir.name,
                         deps=list(deps))
        self.snippet = snippet

    def command(self, force=False):
        return ["bash", "-c", self.snippet]

    def display(self, settings):
        return self.snippet


def plan_reply(state):
    return (f'if [ "$SWEEP_PLAN" = 1 ]; then printf "run_dir\\t%s\\nneeds\\t\\nkind\\ttrain\\nstate\\t{state}\\n" '
            f'"$RUN"; exit 0; fi; ')


def test_the_queue_waits_out_a_held_folder_and_counts_a_lost_race_as_held_not_failed(tmp_path, capsys):
    raced, held, after = (tmp_path / name for name in ("raced", "held", "after"))
    for folder in (raced, held, after):
        folder.mkdir()
    jobs = [
        # exit 75: another process took the folder first and finished the run there
        StandInJob(f'RUN={raced}; ' + plan_reply("finished") + "exit 75", raced),
        # its folder is locked below until a second later: not started before, started once free
        StandInJob(f'RUN={held}; ' + plan_reply("resume") + f"touch {held}/ran", held),
        StandInJob(f'RUN={after}; ' + plan_reply("start") + f"touch {after}/ran", after, deps=[0]),
    ]
    settings = Settings({"OUTPUT": str(tmp_path)}, str(tmp_path / "sweep"))
    lock = RunLock(str(held), "held for a second").acquire()
    seen_while_held = []
    threading.Timer(1.0, lambda: (seen_while_held.append((held / "ran").exists()), lock.release())).start()
    states = LocalQueue(jobs, settings, slots_for(slots=2)).run()
    out = capsys.readouterr().out
    assert states == {0: DONE, 1: DONE, 2: DONE}
    assert seen_while_held == [False] and (held / "ran").exists() and (after / "ran").exists()
    assert "held     raced: another process" in out and "FAILED" not in out
    assert f"held     held: {held} is in use by process {os.getpid()}" in out


def test_gpu_slots_give_each_running_job_its_own_gpus(tmp_path, capsys):
    """--gpus 0,1,2,3 with NGPU=2: two slots, CUDA_VISIBLE_DEVICES 0,1 and 2,3, never shared at once."""
    slots = slots_for(["0", "1", "2", "3"], gpus_per_job=2)
    assert [env for _, env in slots] == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    busy = tmp_path / "busy"
    busy.mkdir()
    snippet = (f'mkdir {busy}/"$CUDA_VISIBLE_DEVICES" || exit 1; echo "$CUDA_VISIBLE_DEVICES" >> {tmp_path}/used; '
               f'sleep 0.3; rmdir {busy}/"$CUDA_VISIBLE_DEVICES"')
    jobs = [StandInJob(snippet, tmp_path / f"job{n}") for n in range(4)]
    states = LocalQueue(jobs, Settings({"OUTPUT": str(tmp_path)}, str(tmp_path / "sweep")), slots).run()
    assert states == {n: DONE for n in range(4)}, capsys.readouterr().out
    assert sorted((tmp_path / "used").read_text().split()) == ["0,1", "0,1", "2,3", "2,3"]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "-1"], "argument --seeds: -1 is not a whole number >= 0 (train.py reads a negative seed as"),
    (["--gpus", "0,abc"], "--gpus 0,abc: give distinct GPU ids as CUDA_VISIBLE_DEVICES takes them"),
    (["--launcher", "slurm", "--time", "2h"], "--time 2h: give minutes (240) or DATASET=MINUTES (imagenet=720)"),
    (["--launcher", "slurm", "--sbatch", "array=0-3"], "--sbatch array=0-3: the sweep sets --array itself"),
    (["--launcher", "slurm", "--cpus-per-job", "0"], "argument --cpus-per-job: 0 is not a whole number >= 1"),
])
def test_bad_values_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse(["base2new", "--trainers", "CoCoOp", *argv])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err.splitlines()[-1], err


def slurm_dry_run(monkeypatch, capsys, root, data, output, *extra):
    """A Slurm --dry-run in this process, on a partition of 2 CPUs and 4 GPUs (what sinfo would say)."""
    offer = {"name": "gpu", "cpus": 2, "gpus": 4, "mem_mb": 64000, "minutes": 2880}
    monkeypatch.setattr(cli, "partition_offer", lambda partition: offer)
    for key, value in dict(environment(root, output), DATA=str(data)).items():
        monkeypatch.setenv(key, value)
    code = cli.main(["base2new", "--trainers", "CoCoOp", "--seeds", "1", "--launcher", "slurm", "--dry-run",
                     "--cpus-per-job", "2", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_ledger_that_is_not_one_is_named_in_one_line(inputs, tmp_path, monkeypatch, capsys):
    root, opts = inputs
    output = tmp_path / "output"
    ledger = output / "sweep" / "slurm_jobs.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"a": "1",')                      # cut short by a full disk, say
    code, out, err = slurm_dry_run(monkeypatch, capsys, root, root / "data", output, "--datasets", "oxford_pets", *opts)
    assert code == 2 and err.count("\n") == 1, out + err
    assert err.startswith(f"tools.sweep: error: {ledger} cannot be read as the sweep's job ledger (Expecting")
    ledger.write_text('["a", "b"]')
    with pytest.raises(SweepError, match=rf"^{re.escape(str(ledger))} is not the sweep's job ledger .*found list"):
        Ledger(str(ledger)).read()
    assert ledger.read_text() == '["a", "b"]'            # left as it was


def test_a_slurm_dry_run_shows_each_submission_its_time_limit_and_the_cost_per_trainer_and_dataset(
        inputs, tmp_path, monkeypatch, capsys):
    root, opts = inputs
    data = tmp_path / "data"
    data.mkdir()
    (data / "oxford_pets").symlink_to(root / "data" / "oxford_pets")
    code, out, err = slurm_dry_run(monkeypatch, capsys, root, data, tmp_path / "output", "--datasets", "oxford_pets",
                                   "caltech101", "--time", "caltech101=90", *opts)
    assert code == 2 and "DATA=" in err and "lacks what the sweep needs: caltech101 (caltech-101/)" in err, out + err
    (data / "caltech-101").mkdir()
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "empty_cache"))
    code, out, err = slurm_dry_run(monkeypatch, capsys, root, data, tmp_path / "output", "--datasets", "oxford_pets",
                                   *opts, "MODEL.BACKBONE.NAME", "ViT-B/16")
    assert code == 2 and f"CLIP weights ViT-B/16 are not in the cache ({tmp_path}/empty_cache/ViT-B-16.pt)" in err
    laion = "ViT-B-32/laion2b_s34b_b79k"                 # an open_clip model: not fetched, then put by hand
    code, out, err = slurm_dry_run(monkeypatch, capsys, root, data, tmp_path / "output", "--datasets", "oxford_pets",
                                   *opts, "MODEL.BACKBONE.NAME", laion)
    assert code == 2 and f"CLIP weights {laion} are not fetched yet" in err, out + err
    by_hand = tmp_path / "empty_cache" / "open_clip" / "ViT-B-32" / "laion2b_s34b_b79k"
    by_hand.mkdir(parents=True)
    (by_hand / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    code, out, err = slurm_dry_run(monkeypatch, capsys, root, data, tmp_path / "output", "--datasets", "oxford_pets",
                                   *opts, "MODEL.BACKBONE.NAME", laion)
    assert "CLIP weights" not in err, out + err
    code, out, err = slurm_dry_run(monkeypatch, capsys, root, data, tmp_path / "output", "--datasets", "oxford_pets",
                                   "caltech101", "--time", "caltech101=90", *opts)
    assert code == 0, out + err
    assert "  per trainer: CoCoOp " in out and re.search(r"  per dataset: caltech101 [\d.]+, oxford_pets [\d.]+", out)
    assert "Slurm partition gpu: nodes of up to 2 CPUs, 4 GPUs, 62 GB; 2880 min (sinfo)" in out
    arrays = out.split("Slurm submissions (4), each job asking for 1 GPUs, 2 CPUs:\n")[1].splitlines()
    # the trainings share no array: one gets --time caltech101=90, the other a limit from its estimate
    assert re.fullmatch(r"  job b2n-CoCoOp-oxford_pets-s1: time limit 30 min, longest estimate 0:0\d:\d\d", arrays[0])
    assert re.fullmatch(r"  job b2n-CoCoOp-caltech101-s1: time limit 90 min, longest estimate [\d:]+", arrays[1])
    assert arrays[2].endswith(f", after base2new/train_base/oxford_pets/shots_2/CoCoOp/{CFG}/seed1")


def test_the_eta_is_unknown_when_nothing_estimates_the_jobs_left(tmp_path, inputs):
    """A dataset of unknown size: no ETA rather than 0:00:00."""
    _, opts = inputs
    job = StandInJob("true", tmp_path / "job")
    job.kind = "eval"
    settings = Settings(environment(*inputs[:1], tmp_path), str(tmp_path / "sweep"))
    queue = LocalQueue([job], settings, slots_for(slots=1), Estimator([job], opts, settings))
    assert queue.eta() is None
    assert queue.progress.status({}, queue.eta()).endswith("0/1 finished | ETA unknown")
