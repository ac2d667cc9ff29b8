"""python -m tools.sweep: a whole benchmark as one resumable command, on this machine's GPUs (or CPU
slots) or on a Slurm cluster. See docs/cluster.md.

    python -m tools.sweep base2new --trainers MuPL CoCoOp --launcher local --gpus 0,1,2,3
    python -m tools.sweep base2new --trainers MuPL --launcher slurm --partition gpu --time 240 --dry-run
    python -m tools.sweep xd --trainers MuPL --seeds 1 --launcher local --slots 2 OPTIM.MAX_EPOCH 2

Environment, as the scripts read it: DATA (default ./data), OUTPUT (default ./output), SHOTS (default
16), PYTHON (default: the Python running the sweep), NGPU (processes per job under torchrun).
Trailing KEY VALUE options (config keys such as OPTIM.MAX_EPOCH) go to every job's script.
"""
import argparse
import os
import os.path as osp
import re
import sys

import parse_test_res
from tools import report

from .estimate import Estimator
from .jobs import (BENCHMARKS, FINISHED, HELD, QUEUED, RERUN, RESUME, STALE, START, UNKNOWN, Settings, SweepError,
                   plan)
from .local import LocalQueue, slots_for
from .progress import DONE, summary
from .slurm import SlurmQueue

CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")   # yacs keys: OPTIM.MAX_EPOCH, ...
PLAN_TITLES = {FINISHED: "finished", STALE: "stale: made by something else (--rerun-stale reruns them)",
               RESUME: "to resume", START: "to start",
               RERUN: "to rerun (--force or --rerun-stale moves the existing run aside first)",
               "waiting": "waiting for a dependency", HELD: "held by another process",
               QUEUED: "queued in Slurm already"}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__.split("\n\n")[0],
                                     epilog="Trailing KEY VALUE config options go to every job.")
    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("--trainers", nargs="+", required=True, metavar="TRAINER")
    parser.add_argument("--configs", nargs="+", metavar="CFG",
                        help="config names under configs/trainers/<TRAINER>/ (default: each trainer's default_cfg.txt)")
    parser.add_argument("--datasets", nargs="+", metavar="DATASET", help="default: the benchmark's datasets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--shot-list", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="fewshot: shots")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    slots = parser.add_mutually_exclusive_group()
    slots.add_argument("--gpus", help="local: GPU ids (e.g. 0,1,2,3); each job gets one, or NGPU of them")
    slots.add_argument("--slots", type=int, help="local: jobs at a time, environment unchanged (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its cost, run nothing")
    parser.add_argument("--force", action="store_true",
                        help="rerun finished runs too (the scripts move the old folder aside, never delete it)")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="rerun the finished runs made by another config, weights, split or code (moved aside)")
    parser.add_argument("--allow-code-change", action="store_true",
                        help="a finished run made by another code version is not stale")
    parser.add_argument("--stop-timeout", type=float, default=120,
                        help="seconds a stopped job gets to write its checkpoint before it is killed")
    parser.add_argument("--log-dir", help="the sweep's logs and Slurm files (default: $OUTPUT/sweep)")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time", type=int, default=240, help="minutes per job (default 240)")
    slurm.add_argument("--gpus-per-job", type=int, default=1)
    slurm.add_argument("--cpus-per-job", type=int, default=8)
    slurm.add_argument("--mem-gb", type=float)
    slurm.add_argument("--array-parallelism", type=int, default=16, help="running tasks per job array")
    slurm.add_argument("--max-requeues", type=int, default=3, help="requeues after a timeout (preemption: no limit)")
    slurm.add_argument("--signal-delay", type=int, default=120,
                       help="seconds before the time limit at which a job is stopped with a checkpoint and requeued")
    slurm.add_argument("--no-wait", action="store_true", help="submit, then exit (rerun to follow the jobs)")
    slurm.add_argument("--poll", type=float, default=30, help="seconds between two looks at the queue (squeue)")
    return parser


def parse(argv):
    """Arguments, and the trailing KEY VALUE options (from the first config key on)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    start = next((i for i, token in enumerate(argv) if CONFIG_KEY.match(token)), len(argv))
    parser = build_parser()
    args = parser.parse_args(argv[:start])
    args.opts = argv[start:]
    if len(args.opts) % 2:
        parser.error(f"config options come in KEY VALUE pairs, got: {' '.join(args.opts)}")
    if args.launcher == "slurm" and (args.gpus or args.slots):
        parser.error("--gpus and --slots are for --launcher local; Slurm jobs ask for --gpus-per-job")
    if args.slots is not None and args.slots < 1:
        parser.error("--slots must be at least 1")
    args.gpus = [gpu for gpu in (args.gpus or "").split(",") if gpu]
    return args


def sweep_settings(args):
    """The jobs' environment as the scripts read it (folders made absolute, for Slurm's nodes)."""
    env = {"DATA": osp.abspath(os.environ.get("DATA", "./data")),
           "OUTPUT": osp.abspath(os.environ.get("OUTPUT", "./output")),
           "SHOTS": os.environ.get("SHOTS", "16"),
           "PYTHON": os.environ.get("PYTHON", sys.executable)}
    if "NGPU" in os.environ:
        env["NGPU"] = os.environ["NGPU"]
    env["RERUN_STALE"], env["ALLOW_CODE_CHANGE"] = ("1" if args.rerun_stale else "0",
                                                    "1" if args.allow_code_change else "0")
    for name in ("SHOTS", "NGPU"):
        value = env.get(name, "1")
        if not value.isdigit() or int(value) < 1:
            raise SweepError(f"{name} must be a positive whole number, got '{value}'")
    settings = Settings(env, osp.abspath(args.log_dir or osp.join(env["OUTPUT"], "sweep")), args.force,
                        args.stop_timeout)
    if len(args.gpus) % settings.gpus_per_job:
        raise SweepError(f"--gpus lists {len(args.gpus)} GPUs, not a multiple of NGPU={settings.gpus_per_job}, "
                         "the GPUs of one job")
    return settings


def plan_title(job):
    if job.state in (RESUME, START, RERUN) and job.deps:
        return PLAN_TITLES["waiting"]
    return PLAN_TITLES[job.state]


def print_plan(jobs, estimator, gpus_per_job):
    groups = {}
    for job in jobs:
        groups.setdefault(plan_title(job), []).append(job)
    for title in PLAN_TITLES.values():
        if title not in groups:
            continue
        print(f"{title} ({len(groups[title])}):")
        for job in groups[title]:
            note = f": {job.holder}" if job.state == HELD else ""
            note += f": differs in {job.differs}" if job.differs else ""
            note += " (provenance unknown: no run.json)" if job.provenance == UNKNOWN else ""
            note += f" (after {jobs[job.deps[0]].name})" if job.deps and job.state != FINISHED else ""
            print(f"  {job.name}{note}")
    to_run = [job for job in jobs if job.state in (RESUME, START, RERUN)]
    if to_run:
        print("\n".join(estimator.summary(to_run, gpus_per_job)))


def stale_line(stale, shown=5):
    """One line naming the stale runs (the first few) and what differs, and how to rerun them."""
    names = "; ".join(f"{job.name} ({job.differs})" for job in stale[:shown])
    more = f"; and {len(stale) - shown} more (--dry-run lists them)" if len(stale) > shown else ""
    count = f"{len(stale)} of the sweep's runs " + ("are" if len(stale) > 1 else "is")
    return (f"{count} stale, made by another config, weights, split or code: {names}{more}; "
            "rerun them with --rerun-stale (moves them aside), or --allow-code-change where only the code differs")


def print_results(args, jobs, settings):
    """The report of what finished: tools.report's tables, or per-experiment means for few-shot."""
    print()
    if args.benchmark != "fewshot":
        report.main([settings.env["OUTPUT"], "--trainers", *args.trainers, "--seeds", *map(str, args.seeds)])
        return
    for experiment in sorted({osp.dirname(job.run_dir) for job in jobs}):
        parse_test_res.parse_experiment(experiment)


def run(args, jobs, settings, estimator):
    """Launch; returns (states, details, stop signal or None)."""
    if args.launcher == "local":
        slots = slots_for(args.gpus, args.slots or 1, settings.gpus_per_job)
        queue = LocalQueue(jobs, settings, slots, estimator)
        states = queue.run()
        return states, queue.details, queue.stop_signal
    queue = SlurmQueue(jobs, settings, args)
    queue.mark_queued()
    submitted = queue.submit()
    print(f"Submitted {len(submitted)} jobs to Slurm (ledger: {queue.ledger_path})")
    if args.no_wait:
        print("Rerun the same command to follow them (it submits nothing twice).")
        return None, queue.details, None
    states = queue.follow()
    if queue.stop_signal is not None:
        print("Stopped following; the jobs stay in the Slurm queue. Rerun the same command to follow them.")
    return states, queue.details, queue.stop_signal


def main(argv=None):
    args = parse(argv)
    try:
        settings = sweep_settings(args)
        jobs = plan(args.benchmark, args.trainers, args.configs, args.datasets, args.seeds, args.shot_list,
                    args.opts, settings)
        if args.launcher == "slurm" and args.dry_run:
            SlurmQueue(jobs, settings, args).mark_queued()
    except SweepError as error:
        print(f"tools.sweep: error: {error}", file=sys.stderr)
        return 2
    estimator = Estimator(jobs, args.opts, settings)
    stale = [job for job in jobs if job.state == STALE]
    if stale and not args.dry_run:
        print(f"tools.sweep: error: {stale_line(stale)}", file=sys.stderr)
        return 2
    unknown = [job.name for job in jobs if job.state == FINISHED and job.provenance == UNKNOWN]
    if unknown and not args.dry_run:
        print(f"Kept {len(unknown)} finished runs of unknown provenance (no run.json): {', '.join(unknown[:5])}"
              + (" ..." if len(unknown) > 5 else ""))
    if args.dry_run:
        print_plan(jobs, estimator, args.gpus_per_job if args.launcher == "slurm" else settings.gpus_per_job)
        return 0
    states, details, stop_signal = run(args, jobs, settings, estimator)
    if states is None:
        return 0
    counts = summary(jobs, states, details, settings)
    print_results(args, jobs, settings)
    if stop_signal is not None:
        return 128 + stop_signal
    return 0 if counts.get(DONE, 0) == len(jobs) else 1
