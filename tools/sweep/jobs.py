"""The jobs of a sweep: calls of the run scripts, planned by the scripts themselves.

A job is one call of a script in scripts/ (base2new_train.sh, xd_test.sh, ...) with the arguments
run_benchmark.sh gives it. Where its run goes, which trained model it reads and whether it is finished,
to resume or to start are asked of the script (SWEEP_PLAN=1, see scripts/lib.sh), so the run folders and
the train.py arguments have one definition: the scripts.
"""
import os
import os.path as osp
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dassl.utils.runlock import folder_in_use
from tools.report import BASE2NEW_DATASETS, DG_TARGETS, XD_TARGETS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPTS = osp.join(REPO, "scripts")
TRAINER_CONFIGS = osp.join(REPO, "configs", "trainers")
BENCHMARKS = ("base2new", "xd", "dg", "fewshot")
DEFAULT_DATASETS = {"base2new": list(BASE2NEW_DATASETS), "fewshot": list(BASE2NEW_DATASETS),
                    "xd": list(XD_TARGETS), "dg": list(DG_TARGETS)}
SOURCE_DATASET = "imagenet"   # what xd_train.sh trains on

# Plan states, as the scripts report them (finished / stale / resume / start), and as the sweep sees them.
FINISHED, RESUME, START = "finished", "resume", "start"
STALE = "stale"               # made by another config, weights, split, few-shot list, model or code
UNKNOWN = "unknown"           # the provenance of a finished run without run.json (kept, never refused)
RERUN = "rerun"               # --force, or --rerun-stale for a stale run: moved aside first
HELD = "held"                 # a live process holds the run folder's lock
QUEUED = "queued"             # in the Slurm queue already (an earlier sweep submitted it)
TO_RUN = (RESUME, START, RERUN)


# The scripts' switches for stale runs (--rerun-stale, --allow-code-change), which the sweep sets for its jobs.
PROVENANCE_SWITCHES = ("RERUN_STALE", "ALLOW_CODE_CHANGE")


class SweepError(RuntimeError):
    """A sweep that cannot be planned; the message says what to fix."""


@dataclass
class Settings:
    """How every job of a sweep runs."""
    env: dict                   # what the sweep sets for its jobs: DATA, OUTPUT, SHOTS, PYTHON (, NGPU)
    log_dir: str                # the sweep's own files: logs/<run>.log, Slurm's folder and job ledger
    force: bool = False         # --force: the scripts move existing runs aside first
    stop_timeout: float = 120   # seconds a stopped job gets to write its checkpoint

    @property
    def gpus_per_job(self):
        """NGPU: the GPUs (torchrun processes) of one job."""
        return int(self.env.get("NGPU", 1))

    def process_env(self, **extra):
        """The environment of a script run here: this process's, the sweep's variables, ``extra``."""
        return {**os.environ, **self.env, **extra}

    def log_file(self, job):
        """Where a job's script writes its output: <log dir>/logs/<run folder relative to OUTPUT>.log."""
        return osp.join(self.log_dir, "logs", job.name + ".log")


@dataclass
class Job:
    script: str                 # a file of scripts/
    args: list                  # its arguments, KEY VALUE options included (no --force)
    trainer: str
    cfg: str
    dataset: str
    shots: int
    run_dir: str = ""
    needs: str = ""             # the run folder of the trained model it evaluates, if any
    kind: str = "train"         # "train" or "eval" (an --eval-only run)
    state: str = START
    holder: str = ""            # who holds the run folder, when HELD
    provenance: str = ""        # of an existing run: same, unknown (no run.json) or stale
    differs: str = ""           # what differs, when stale
    deps: list = field(default_factory=list)   # indices of the jobs that must finish first
    name: str = ""              # the run folder, relative to OUTPUT

    def command(self, force=False):
        return ["bash", osp.join(SCRIPTS, self.script), *(["--force"] if force else []), *self.args]

    def display(self, settings):
        """The command as one copy-pasteable shell line (from the repository root), with its environment."""
        env = " ".join(f"{key}={shlex.quote(settings.env[key])}" for key in ("DATA", "OUTPUT", "SHOTS")
                       + PROVENANCE_SWITCHES if settings.env.get(key, "0") != "0")
        script = ["bash", f"scripts/{self.script}", *(["--force"] if settings.force else []), *self.args]
        return f"{env} {shlex.join(script)}"


def default_config(trainer):
    """The recipe a trainer runs when no config is named: configs/trainers/<TRAINER>/default_cfg.txt."""
    path = osp.join(TRAINER_CONFIGS, trainer, "default_cfg.txt")
    if not osp.isfile(path):
        known = " ".join(sorted(os.listdir(TRAINER_CONFIGS)))
        raise SweepError(f"unknown trainer '{trainer}': no {path} (trainers: {known})")
    with open(path) as handle:
        return "".join(handle.read().split())


def benchmark_jobs(benchmark, trainer, cfg, datasets, seeds, shot_list, opts, shots):
    """(sources, jobs): the jobs of run_benchmark.sh's loops for one trainer and config; for xd and dg,
    sources are the ImageNet trainings per seed, which only the evaluations that need one bring in."""
    tail = [trainer, cfg, *opts]

    def job(script, head, dataset, job_shots=shots):
        return Job(script, [*map(str, head), *tail], trainer, cfg, dataset, job_shots)

    if benchmark == "base2new":
        return [], [job(script, [dataset, seed], dataset) for dataset in datasets for seed in seeds
                    for script in ("base2new_train.sh", "base2new_test.sh")]
    if benchmark == "fewshot":
        return [], [job("fewshot.sh", [dataset, k, seed], dataset, k)
                    for dataset in datasets for k in shot_list for seed in seeds]
    script = "xd_test.sh" if benchmark == "xd" else "dg_test.sh"
    sources = [job("xd_train.sh", [seed], SOURCE_DATASET) for seed in seeds]
    return sources, [job(script, [dataset, seed], dataset) for dataset in datasets for seed in seeds]


def ask_script(job, settings):
    """Fill in the job's plan from its script (SWEEP_PLAN=1); SweepError with the script's own error."""
    result = subprocess.run(job.command(), env=settings.process_env(SWEEP_PLAN="1"), capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SweepError(f"scripts/{job.script} {shlex.join(job.args)}: {result.stderr.strip()}")
    plan = dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    job.run_dir, job.needs, job.kind, job.state = plan["run_dir"], plan["needs"], plan["kind"], plan["state"]
    job.provenance, job.differs = plan.get("provenance", ""), plan.get("differs", "")
    job.name = osp.relpath(job.run_dir, settings.env["OUTPUT"])
    return job


def ask_scripts(jobs, settings):
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda job: ask_script(job, settings), jobs))


def link(jobs, force):
    """Each evaluation waits for the job that trains its model, unless that run is finished (and kept)."""
    by_dir = {job.run_dir: index for index, job in enumerate(jobs)}
    for job in jobs:
        if not job.needs:
            continue
        if job.needs not in by_dir:
            raise SweepError(f"{job.name} needs {job.needs}, which no job of this sweep makes")
        source = by_dir[job.needs]
        if force or jobs[source].state != FINISHED:
            job.deps = [source]


def mark_stale_evaluations(jobs):
    """A finished evaluation of a model whose training is stale is stale too: that model is retrained."""
    by_dir = {job.run_dir: job for job in jobs}
    for job in jobs:
        source = by_dir.get(job.needs)
        if job.state == FINISHED and source is not None and source.state == STALE:
            job.state, job.differs = STALE, "model (its training run is stale)"


def mark_states(jobs, force, rerun_stale=False):
    """HELD where a live process holds the folder; with --force every existing run is rerun, with
    --rerun-stale every stale one."""
    mark_stale_evaluations(jobs)
    for job in jobs:
        holder = folder_in_use(job.run_dir)
        if holder:
            job.state, job.holder = HELD, holder
        elif (force and job.state != START) or (rerun_stale and job.state == STALE):
            job.state = RERUN


def plan(benchmark, trainers, configs, datasets, seeds, shot_list, opts, settings):
    """The sweep's jobs, in run_benchmark.sh's order, each once, with states and dependencies."""
    datasets = datasets or DEFAULT_DATASETS[benchmark]
    sources, jobs = [], []
    for trainer in trainers:
        for cfg in configs or [default_config(trainer)]:
            found_sources, found = benchmark_jobs(benchmark, trainer, cfg, datasets, seeds, shot_list, opts,
                                                  int(settings.env["SHOTS"]))
            sources += found_sources
            jobs += found
    jobs = ask_scripts(jobs, settings)
    sources = [source for source in sources if _source_needed(source, jobs)]
    unique = {}
    for job in ask_scripts(sources, settings) + jobs:
        unique.setdefault(job.run_dir, job)
    jobs = list(unique.values())
    link(jobs, settings.force)
    mark_states(jobs, settings.force, settings.env.get("RERUN_STALE") == "1")
    return jobs


def _source_needed(source, jobs):
    """Plan an ImageNet training only where an evaluation of its trainer, config and seed needs a model
    (ZeroshotCLIP's evaluations need none, and xd_train.sh refuses it)."""
    key = (source.trainer, source.cfg, source.args[0])
    return any(job.needs and (job.trainer, job.cfg, job.args[1]) == key for job in jobs)
