"""What the Slurm launcher asks of the cluster: job names, time limits, the #SBATCH options, and the check
of those options against what the partition offers (sinfo), before anything is submitted."""
import getpass
import math
import re
import shlex
import subprocess

from .jobs import REPO, SweepError

DEFAULT_MINUTES = 240            # the time limit of a job nothing estimates (a dataset of unknown size)
TIME_MARGIN = 1.5                # the derived limit: the estimate x this, plus TIME_SLACK_MINUTES,
TIME_SLACK_MINUTES = 10          # rounded up to a TIME_STEPS value (fewer distinct limits, fewer arrays)
TIME_STEPS = (30, 60, 120, 240, 480, 720, 1440, 2880, 5760)
BENCHMARK_TAGS = {"base2new_train.sh": "b2n", "base2new_test.sh": "b2n", "xd_train.sh": "xd", "xd_test.sh": "xd",
                  "dg_test.sh": "dg", "fewshot.sh": "fs"}
GRES_GPUS = re.compile(r"^gpu(?::[^:(]+)?:(\d+)")     # gpu:4, gpu:a100:4(S:0-1)
SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
OWN_SBATCH_KEYS = {"array", "dependency", "job-name", "output", "error", "time", "partition", "account",
                   "signal", "open-mode", "wckey"}   # what the launcher sets itself: use its own options


def name_fields(job):
    """The parts of a job's Slurm name: benchmark, trainer, dataset, (shots,) seed."""
    seed = job.args[job.args.index(job.trainer) - 1]
    shots = [f"k{job.shots}"] if job.script == "fewshot.sh" else []
    return [BENCHMARK_TAGS.get(job.script, job.script), job.trainer, job.dataset, *shots, f"s{seed}"]


def array_name(jobs):
    """A job's name (b2n-MuPL-oxford_pets-s1); for an array, the parts its jobs share (b2n-MuPL-s1)."""
    fields = [name_fields(job) for job in jobs]
    return "-".join(part for n, part in enumerate(fields[0]) if all(other[n] == part for other in fields))


def parse_times(values):
    """--time: [MINUTES] [DATASET=MINUTES ...] -> (minutes for all or None, {dataset: minutes})."""
    everywhere, per_dataset = None, {}
    for value in values or ():
        dataset, _, minutes = value.rpartition("=")
        if not minutes.isdigit() or int(minutes) < 1 or (dataset == "" and "=" in value):
            raise SweepError(f"--time {value}: give minutes (240) or DATASET=MINUTES (imagenet=720), whole and "
                             "positive")
        if dataset:
            per_dataset[dataset] = int(minutes)
        else:
            everywhere = int(minutes)
    return everywhere, per_dataset


def parse_sbatch(values):
    """--sbatch KEY=VALUE or KEY (a flag) -> submitit's additional_parameters."""
    extra = {}
    for value in values or ():
        key, equals, setting = value.partition("=")
        key = key.lstrip("-")
        if not SBATCH_KEY.match(key) or (equals and not setting):
            raise SweepError(f"--sbatch {value}: give an sbatch option as KEY=VALUE (licenses=scratch:1) or KEY "
                             "(exclusive), without its dashes")
        if key in OWN_SBATCH_KEYS:
            raise SweepError(f"--sbatch {value}: the sweep sets --{key} itself; use its own option for it")
        extra[key] = setting if equals else True
    return extra


def time_limit(job, estimator, options):
    """Minutes for one job: --time DATASET=MIN, else --time MIN, else its estimate with a margin (at most
    the partition's limit: a job stopped there is requeued and resumes)."""
    everywhere, per_dataset = options.times
    if job.dataset in per_dataset:
        return per_dataset[job.dataset]
    if everywhere:
        return everywhere
    seconds = estimator.seconds(job)[0] if estimator else None
    if seconds is None:
        return DEFAULT_MINUTES
    wanted = seconds * TIME_MARGIN / 60 + TIME_SLACK_MINUTES + options.signal_delay / 60
    minutes = next((step for step in TIME_STEPS if step >= wanted), math.ceil(wanted))
    return min(minutes, options.partition_minutes or minutes)


def executor_parameters(options, name, minutes):
    """submitit's SlurmExecutor parameters of one submission."""
    optional = {"partition": options.partition, "account": options.account, "qos": options.qos,
                "constraint": options.constraint, "exclude": options.exclude, "nodelist": options.nodelist,
                "mail_type": options.mail_type, "mail_user": options.mail_user,
                "gpus_per_node": options.gpus_per_job or None, "cpus_per_task": options.cpus_per_job,
                "mem": f"{options.mem_gb}GB" if options.mem_gb else None}
    extra = {"kill-on-invalid-dep": "yes", "requeue": True, **parse_sbatch(options.sbatch)}
    if options.reservation:
        extra["reservation"] = options.reservation
    setup = [*options.setup, f"export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    return dict(job_name=name, time=minutes, array_parallelism=options.array_parallelism,
                signal_delay_s=options.signal_delay, stderr_to_stdout=True, setup=setup,
                additional_parameters=extra, **{key: value for key, value in optional.items() if value is not None})


# --- what the partition offers ----------------------------------------------------------------------
def _minutes(limit):
    """sinfo's time limit (infinite, 30:00, 4:00:00, 2-00:00:00) in minutes, None when unlimited."""
    if limit in ("infinite", "UNLIMITED", "n/a"):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    hours, minutes, seconds = [0] * (3 - len(parts)) + parts if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)


def _gpus(gres):
    return max((int(match.group(1)) for item in gres.split(",") if (match := GRES_GPUS.match(item))), default=0)


def partition_offer(partition):
    """{"name", "cpus", "gpus", "mem_mb", "minutes"}: the most one node of the partition offers (sinfo)."""
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%G|%m|%l"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SweepError(f"sinfo does not answer ({error}): is this a Slurm login node?") from None
    if result.returncode != 0:
        raise SweepError(f"sinfo failed: {result.stderr.strip()}")
    rows = [line.split("|") for line in result.stdout.splitlines() if line.count("|") == 4]
    names = sorted({row[0].rstrip("*") for row in rows})
    chosen = [row for row in rows if (row[0].rstrip("*") == partition if partition else row[0].endswith("*"))]
    if not chosen:
        which = f"partition '{partition}' does not exist" if partition else "there is no default partition"
        raise SweepError(f"--partition: {which} (sinfo lists: {', '.join(names) or 'none'})")
    limits = [_minutes(row[4]) for row in chosen]
    return {"name": chosen[0][0].rstrip("*"), "cpus": max(int(row[1].rstrip("+")) for row in chosen),
            "gpus": max(_gpus(row[2]) for row in chosen), "mem_mb": max(int(row[3].rstrip("+")) for row in chosen),
            "minutes": None if None in limits else max(limits)}


def check_resources(options, offer):
    """SweepError naming the first option the partition cannot give."""
    where = f"partition '{offer['name']}'"
    everywhere, per_dataset = options.times
    longest_minutes = max([everywhere or 0, *per_dataset.values()])
    if options.gpus_per_job > offer["gpus"]:
        fix = "--gpus-per-job 0 (CPU jobs)" if not offer["gpus"] else f"--gpus-per-job {offer['gpus']} or fewer"
        raise SweepError(f"--gpus-per-job {options.gpus_per_job}: the nodes of {where} have "
                         f"{offer['gpus'] or 'no'} GPUs (sinfo); use {fix}, or another --partition")
    if options.cpus_per_job > offer["cpus"]:
        raise SweepError(f"--cpus-per-job {options.cpus_per_job}: the nodes of {where} have at most "
                         f"{offer['cpus']} CPUs (sinfo); use --cpus-per-job {offer['cpus']} or fewer")
    if options.mem_gb and options.mem_gb * 1024 > offer["mem_mb"]:
        raise SweepError(f"--mem-gb {options.mem_gb}: the nodes of {where} have {offer['mem_mb'] / 1024:.1f} GB "
                         "(sinfo); ask for less")
    if offer["minutes"] is not None and longest_minutes > offer["minutes"]:
        raise SweepError(f"--time {longest_minutes}: {where} allows at most {offer['minutes']} minutes per job "
                         "(sinfo); jobs stopped at the limit resume when requeued, so a shorter --time works")


def check_account(account):
    """SweepError when Slurm's accounting lists the user's accounts and ``account`` is not one of them."""
    if not account:
        return
    try:
        result = subprocess.run(["sacctmgr", "-n", "-P", "show", "associations", "where", f"user={getpass.getuser()}",
                                 "format=account"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return
    accounts = set(result.stdout.split())
    if result.returncode == 0 and not result.stderr.strip() and accounts and account not in accounts:
        raise SweepError(f"--account {account}: not one of your Slurm accounts (sacctmgr: "
                         f"{', '.join(sorted(accounts))})")
