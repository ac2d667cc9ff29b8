"""What a sweep's unfinished jobs cost, in GPU-seconds, and from what.

In order of trust: the measured time of finished runs of the same trainer, config and dataset (the
``Elapsed:`` line of a training log); else that trainer's measured seconds per unit of work, scaled to
the job's dataset; else the published per-image cost of docs/results.md, marked as an estimate. A unit
of work is one training image in one epoch; a test image counts a third of one (docs/results.md).
"""
import math
import os.path as osp
import re
import subprocess
from collections import defaultdict

from datasets.sizes import EXPECTED
from parse_test_res import read_run_result

from .jobs import FINISHED, SCRIPTS, TRAINER_CONFIGS

PUBLISHED_SECONDS_PER_IMAGE = 0.160   # CoCoOp, one training image on one GPU (docs/results.md)
TEST_IMAGE_SHARE = 1 / 3             # a forward pass against a training step (docs/results.md)
CLASS_SPLIT = {"base2new_train.sh": "base", "base2new_test.sh": "new"}   # DATASET.SUBSAMPLE_CLASSES
ELAPSED = re.compile(r"^Elapsed: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)$", re.MULTILINE)

MEASURED, SCALED, PUBLISHED = "measured", "scaled", "published"
SOURCE_TEXT = {
    MEASURED: "the measured time of finished runs of the same trainer, config and dataset",
    SCALED: "the same trainer's measured time, scaled by dataset size",
    PUBLISHED: f"CoCoOp's published cost of {PUBLISHED_SECONDS_PER_IMAGE * 1000:.0f} ms per training image "
               "(docs/results.md), whatever the trainer: an estimate (CoOp's batches of 32 cost far less)",
}


def max_epoch(trainer, cfg, opts, settings):
    """The epochs of a training run, as the scripts compute them (scripts/lib.sh max_epoch)."""
    cfg_file = osp.join(TRAINER_CONFIGS, trainer, f"{cfg}.yaml")
    result = subprocess.run(["bash", "-c", 'source "$0/lib.sh"; max_epoch "$@"', SCRIPTS, cfg_file, *opts],
                            env=settings.process_env(), capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


def work(job, epochs):
    """Units of work of a job (see the module docstring), or None for a dataset of unknown size."""
    if job.dataset not in EXPECTED:
        return None
    classes, _, _, test = EXPECTED[job.dataset]
    split = CLASS_SPLIT.get(job.script, "all")
    base = math.ceil(classes / 2)
    share = {"all": classes, "base": base, "new": classes - base}[split] / classes
    test_work = test * share * TEST_IMAGE_SHARE
    if job.kind == "eval":
        return test_work
    return job.shots * round(classes * share) * epochs + test_work


def elapsed_seconds(run_dir):
    """The training time a finished run's log reports, or None (evaluations report none)."""
    log_path = read_run_result(run_dir)[1]
    if not log_path:
        return None
    with open(log_path, errors="replace") as log:
        match = ELAPSED.search(log.read())
    if not match:
        return None
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class Estimator:
    """Seconds per job from the finished runs among ``jobs``; ``opts`` and ``settings`` as the jobs run."""

    def __init__(self, jobs, opts, settings):
        self.opts, self.settings = opts, settings
        self._epochs = {}
        self.same_runs = defaultdict(list)     # (trainer, cfg, script, dataset, shots) -> seconds
        self.rates = defaultdict(list)         # (trainer, cfg) -> seconds per unit of work
        for job in jobs:
            if job.state != FINISHED or job.kind != "train":
                continue
            seconds = elapsed_seconds(job.run_dir)
            if seconds is None:
                continue
            self.same_runs[self._key(job)].append(seconds)
            units = work(job, self.epochs(job))
            if units:
                self.rates[(job.trainer, job.cfg)].append(seconds / units)

    @staticmethod
    def _key(job):
        return job.trainer, job.cfg, job.script, job.dataset, job.shots

    def epochs(self, job):
        key = (job.trainer, job.cfg)
        if key not in self._epochs:
            self._epochs[key] = max_epoch(job.trainer, job.cfg, self.opts, self.settings)
        return self._epochs[key]

    def seconds(self, job):
        """(seconds, source) of one job; (None, None) for a dataset of unknown size."""
        same = self.same_runs.get(self._key(job))
        if same:
            return sum(same) / len(same), MEASURED
        units = work(job, self.epochs(job) if job.kind == "train" else 0)
        if units is None:
            return None, None
        rates = self.rates.get((job.trainer, job.cfg))
        if rates:
            return units * sum(rates) / len(rates), SCALED
        return units * PUBLISHED_SECONDS_PER_IMAGE, PUBLISHED

    def summary(self, jobs, gpus_per_job=1):
        """Lines saying how many GPU-hours ``jobs`` take, and from what."""
        total, sources, unknown = 0.0, defaultdict(int), 0
        for job in jobs:
            seconds, source = self.seconds(job)
            if seconds is None:
                unknown += 1
                continue
            total += seconds * gpus_per_job
            sources[source] += 1
        lines = [f"Estimated cost of the {len(jobs)} jobs to run: {total / 3600:.1f} GPU-hours"]
        lines += [f"  {count} jobs: {SOURCE_TEXT[source]}" for source, count in sources.items()]
        if unknown:
            lines.append(f"  {unknown} not counted: datasets of unknown size")
        return lines

    def breakdown(self, jobs, gpus_per_job=1):
        """Lines with the GPU-hours of ``jobs`` per trainer and per dataset (the counted jobs only)."""
        lines = []
        for title, key in (("trainer", lambda job: job.trainer), ("dataset", lambda job: job.dataset)):
            hours = defaultdict(float)
            for job in jobs:
                seconds = self.seconds(job)[0]
                if seconds is not None:
                    hours[key(job)] += seconds * gpus_per_job / 3600
            lines.append(f"  per {title}: " + ", ".join(f"{name} {value:.1f}" for name, value in
                                                        sorted(hours.items(), key=lambda item: -item[1])))
        return lines
