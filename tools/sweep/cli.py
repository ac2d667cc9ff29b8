"""python -m tools.sweep: a whole benchmark as one resumable command, on this machine's GPUs (or CPU
slots) or on a Slurm cluster. See docs/cluster.md.

    python -m tools.sweep base2new --trainers MuPL CoCoOp --launcher local --gpus 0,1,2,3
    python -m tools.sweep base2new --trainers MuPL --launcher slurm --partition gpu --time 240 --dry-run
    python -m tools.sweep xd --trainers MuPL --seeds 1 --launcher local --slots 2 OPTIM.MAX_EPOCH 2
    python -m tools.sweep status base2new --trainers MuPL      # (or cancel): this sweep's Slurm jobs

Environment, as the scripts read it: DATA (default ./data), OUTPUT (default ./output), SHOTS (default
16), PYTHON (default: the Python running the sweep), NGPU (processes per job under torchrun).
Trailing KEY VALUE options (config keys such as OPTIM.MAX_EPOCH) go to every job's script.
"""
import argparse
import math
import os
import os.path as osp
import re
import sys

import parse_test_res
from tools import report

from .checks import check_data, check_weights
from .estimate import Estimator
from .jobs import (BENCHMARKS, FINISHED, HELD, QUEUED, RERUN, RESUME, STALE, START, TO_RUN, UNKNOWN, Settings,
                   SweepError, plan)
from .ledger import sweep_lock
from .local import LocalQueue, slots_for
from .progress import DONE, summary
from .slurm import SlurmQueue
from .slurm_options import check_account, check_resources, parse_sbatch, parse_times, partition_offer
from .status import cancel, print_arrays, print_status

CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")   # yacs keys: OPTIM.MAX_EPOCH, ...
GPU_ID = re.compile(r"^(\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+)$")   # as CUDA_VISIBLE_DEVICES takes them
ACTIONS = ("status", "cancel")   # python -m tools.sweep {status|cancel} <the sweep's arguments>
PLAN_TITLES = {FINISHED: "finished", STALE: "stale: made by something else (--rerun-stale reruns them)",
               RESUME: "to resume", START: "to start",
               RERUN: "to rerun (--force or --rerun-stale moves the existing run aside first)",
               "waiting": "waiting for a dependency", HELD: "held by another process",
               QUEUED: "queued in Slurm already"}


def whole(minimum, why=""):
    """An argparse type: a whole number >= ``minimum``, else one line saying so (and ``why``)."""
    def parse_whole(text):
        if not re.fullmatch(r"-?\d+", text) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text} is not a whole number >= {minimum}{why}")
        return int(text)
    return parse_whole


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__.split("\n\n")[0],
                                     epilog="Trailing KEY VALUE config options go to every job.")
    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("--trainers", nargs="+", required=True, metavar="TRAINER")
    parser.add_argument("--configs", nargs="+", metavar="CFG",
                        help="config names under configs/trainers/<TRAINER>/ (default: each trainer's default_cfg.txt)")
    parser.add_argument("--datasets", nargs="+", metavar="DATASET", help="default: the benchmark's datasets")
    parser.add_argument("--seeds", nargs="+", type=whole(0, " (train.py reads a negative seed as 'no fixed seed')"),
                        default=[1, 2, 3])
    parser.add_argument("--shot-list", nargs="+", type=whole(1), default=[1, 2, 4, 8, 16], help="fewshot: shots")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    slots = parser.add_mutually_exclusive_group()
    slots.add_argument("--gpus", help="local: GPU ids (e.g. 0,1,2,3); each job gets one, or NGPU of them")
    slots.add_argument("--slots", type=whole(1), help="local: jobs at a time, environment unchanged (default 1)")
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
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint", help="node features, e.g. a GPU type: a100")
    slurm.add_argument("--exclude", help="nodes to leave out")
    slurm.add_argument("--nodelist", help="nodes to run on")
    slurm.add_argument("--reservation")
    slurm.add_argument("--mail-type", help="e.g. END,FAIL")
    slurm.add_argument("--mail-user")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY[=VALUE]",
                       help="any other #SBATCH option, without its dashes: --sbatch licenses=scratch:1 (repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before each job: --setup 'module load cuda/12.1' (repeatable)")
    slurm.add_argument("--time", nargs="+", metavar="MIN|DATASET=MIN",
                       help="minutes per job, for all and/or per dataset (--time 120 imagenet=720); default: each "
                            "job's estimate with a margin (docs/cluster.md)")
    slurm.add_argument("--gpus-per-job", type=whole(0), default=1)
    slurm.add_argument("--cpus-per-job", type=whole(1), default=8)
    slurm.add_argument("--mem-gb", type=float)
    slurm.add_argument("--array-parallelism", type=whole(1), default=16, help="running tasks per job array")
    slurm.add_argument("--max-running", type=whole(1),
                       help="running jobs for the whole submission: the jobs go into this many chains, one after "
                            "another in each (no arrays)")
    slurm.add_argument("--max-requeues", type=whole(0), default=3,
                       help="requeues after a timeout (preemption: no limit)")
    slurm.add_argument("--signal-delay", type=whole(0), default=120,
                       help="seconds before the time limit at which a job is stopped with a checkpoint and requeued")
    slurm.add_argument("--no-wait", action="store_true", help="submit, then exit (rerun to follow the jobs)")
    slurm.add_argument("--poll", type=float, default=30, help="seconds between two looks at the queue (squeue)")
    return parser


def parse(argv):
    """Arguments, and the trailing KEY VALUE options (from the first config key on)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    action = argv.pop(0) if argv and argv[0] in ACTIONS else "run"
    start = next((i for i, token in enumerate(argv) if CONFIG_KEY.match(token)), len(argv))
    parser = build_parser()
    args = parser.parse_args(argv[:start])
    args.action, args.opts = action, argv[start:]
    if action != "run":
        if args.launcher == "local" and any(token.startswith("--launcher") for token in argv[:start]):
            parser.error(f"{action} is for the Slurm launcher's jobs (the local launcher's end with the sweep)")
        args.launcher = "slurm"
    if len(args.opts) % 2:
        parser.error(f"config options come in KEY VALUE pairs, got: {' '.join(args.opts)}")
    if args.launcher == "slurm" and (args.gpus or args.slots):
        parser.error("--gpus and --slots are for --launcher local; Slurm jobs ask for --gpus-per-job")
    args.gpus = [gpu for gpu in (args.gpus or "").split(",") if gpu]
    bad = [gpu for gpu in args.gpus if not GPU_ID.match(gpu)]
    if bad or len(set(args.gpus)) < len(args.gpus):
        parser.error(f"--gpus {','.join(args.gpus)}: give distinct GPU ids as CUDA_VISIBLE_DEVICES takes them "
                     f"(0,1,2,3 or GPU-<uuid>)" + (f"; not one: {bad[0]}" if bad else ""))
    for name in ("mem_gb", "stop_timeout", "poll"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    try:
        args.times = parse_times(args.time)
        parse_sbatch(args.sbatch)
    except SweepError as error:
        parser.error(str(error))
    args.partition_minutes = None   # the partition's time limit, once sinfo said it
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
        print("\n".join(estimator.breakdown(to_run, gpus_per_job)))


def stale_line(stale, shown=5):
    """One line naming the stale runs (the first few) and what differs, and how to rerun them."""
    names = "; ".join(f"{job.name} ({job.differs})" for job in stale[:shown])
    more = f"; and {len(stale) - shown} more (--dry-run lists them)" if len(stale) > shown else ""
    count = f"{len(stale)} of the sweep's runs " + ("are" if len(stale) > 1 else "is")
    return (f"{count} stale, made by another config, weights, split or code: {names}{more}; "
            "rerun them with --rerun-stale (moves them aside), or --allow-code-change where only the code differs")


def refuse_stale(jobs):
    """A sweep never runs beside stale runs (it would mix them into one table): one line, nothing started.
    Finished runs made before run.json existed are kept, and said."""
    stale = [job for job in jobs if job.state == STALE]
    if stale:
        raise SweepError(stale_line(stale))
    unknown = [job.name for job in jobs if job.state == FINISHED and job.provenance == UNKNOWN]
    if unknown:
        print(f"Kept {len(unknown)} finished runs of unknown provenance (no run.json): {', '.join(unknown[:5])}"
              + (" ..." if len(unknown) > 5 else ""))


def print_results(args, jobs, settings):
    """The report of what finished: tools.report's tables, or per-experiment means for few-shot."""
    print()
    if args.benchmark != "fewshot":
        report.main([settings.env["OUTPUT"], "--trainers", *args.trainers, "--seeds", *map(str, args.seeds)])
        return
    for experiment in sorted({osp.dirname(job.run_dir) for job in jobs}):
        parse_test_res.parse_experiment(experiment)


def check_slurm(args, jobs, settings):
    """Everything a Slurm job will need, before anything is submitted; what the partition offers."""
    everywhere, per_dataset = args.times
    unknown = sorted(set(per_dataset) - {job.dataset for job in jobs})
    if unknown:
        raise SweepError(f"--time {unknown[0]}={per_dataset[unknown[0]]}: no job of this sweep is on {unknown[0]} "
                         f"(its datasets: {' '.join(sorted({job.dataset for job in jobs}))})")
    shortest = min([everywhere or math.inf, *per_dataset.values()])
    if shortest * 60 <= args.signal_delay:
        raise SweepError(f"--time {shortest}: not longer than --signal-delay {args.signal_delay} s, the time a "
                         "job is stopped before its limit; give more minutes or a shorter --signal-delay")
    check_data(jobs, settings.env["DATA"])
    check_weights(jobs)
    offer = partition_offer(args.partition)
    check_resources(args, offer)
    check_account(args.account)
    args.partition_minutes = offer["minutes"]
    return offer


def submit(queue, settings):
    """Under the sweep lock: what is queued already, then what is not (each recorded as accepted)."""
    with sweep_lock(settings.log_dir, print):
        queue.mark_queued()
        submitted = queue.submit()
    before = len(queue.ids) - len(submitted)
    print(f"Submitted {len(submitted)} jobs to Slurm" + (f", {before} were queued already" if before else "")
          + f" (ledger: {queue.ledger_path})")


def run(args, jobs, settings, estimator):
    """Launch; returns (states, details, stop signal or None)."""
    if args.launcher == "local":
        slots = slots_for(args.gpus, args.slots or 1, settings.gpus_per_job)
        queue = LocalQueue(jobs, settings, slots, estimator)
        states = queue.run()
        return states, queue.details, queue.stop_signal
    queue = SlurmQueue(jobs, settings, args, estimator)
    submit(queue, settings)
    if args.no_wait:
        print("Rerun the same command to follow them (it submits nothing twice).")
        return None, queue.details, None
    states = queue.follow()
    if queue.stop_signal is not None:
        print("Stopped following; the jobs stay in the Slurm queue. Rerun the same command to follow them.")
    return states, queue.details, queue.stop_signal


def slurm_action(args, jobs, settings, estimator):
    """status, cancel, or the Slurm part of a --dry-run."""
    queue = SlurmQueue(jobs, settings, args, estimator)
    queue.mark_queued()
    if args.action == "status":
        print_status(queue)
    elif args.action == "cancel":
        cancel(queue)
    else:
        offer = check_slurm(args, jobs, settings) if any(job.state in TO_RUN for job in jobs) else None
        print_plan(jobs, estimator, args.gpus_per_job)
        print_arrays(queue, offer)


def main(argv=None):
    args = parse(argv)
    try:
        settings = sweep_settings(args)
        jobs = plan(args.benchmark, args.trainers, args.configs, args.datasets, args.seeds, args.shot_list,
                    args.opts, settings)
        estimator = Estimator(jobs, args.opts, settings)
        if args.launcher == "slurm" and (args.dry_run or args.action != "run"):
            slurm_action(args, jobs, settings, estimator)
            return 0
        if args.dry_run:
            print_plan(jobs, estimator, settings.gpus_per_job)
            return 0
        refuse_stale(jobs)
        if args.launcher == "slurm" and any(job.state in TO_RUN for job in jobs):
            check_slurm(args, jobs, settings)
        states, details, stop_signal = run(args, jobs, settings, estimator)
    except SweepError as error:
        print(f"tools.sweep: error: {error}", file=sys.stderr)
        return 2
    if states is None:
        return 0
    counts = summary(jobs, states, details, settings)
    print_results(args, jobs, settings)
    if stop_signal is not None:
        return 128 + stop_signal
    return 0 if counts.get(DONE, 0) == len(jobs) else 1
