"""What the sweep shows of its Slurm jobs without following them: the submissions a --dry-run would make,
``python -m tools.sweep status`` (each job's plan state with its Slurm job, live from the ledger and
squeue/sacct) and ``python -m tools.sweep cancel`` (this sweep's queued jobs only, by the ledger's ids)."""
import subprocess

from .progress import clock
from .slurm import ACTIVE, squeue
from .slurm_options import array_name


def print_arrays(queue, offer):
    """Each submission a sweep would make: its jobs, what it asks for, its time limit against the estimate."""
    options = queue.options
    if offer:
        limit = f"{offer['minutes']} min" if offer["minutes"] is not None else "no time limit"
        print(f"Slurm partition {offer['name']}: nodes of up to {offer['cpus']} CPUs, {offer['gpus']} GPUs, "
              f"{offer['mem_mb'] / 1024:.0f} GB; {limit} (sinfo)")
    asks = [f"{options.gpus_per_job} GPUs", f"{options.cpus_per_job} CPUs"]
    asks += [f"{options.mem_gb} GB"] if options.mem_gb else []
    asks += [f"{key} {value}" for key, value in (("qos", options.qos), ("constraint", options.constraint),
                                                  ("account", options.account)) if value]
    arrays, _ = queue.arrays()
    print(f"Slurm submissions ({len(arrays)}), each job asking for {', '.join(asks)}:")
    chains = options.max_running
    for number, (deps, minutes, members) in enumerate(arrays):
        jobs = [queue.jobs[index] for index in members]
        estimates = [queue.estimator.seconds(job)[0] for job in jobs]
        longest = "unknown" if None in estimates else clock(max(estimates))
        kind = f"array of {len(jobs)}" if len(jobs) > 1 else "job"
        after = f", after {', '.join(queue.jobs[dep].name for dep in deps)}" if deps else ""
        after += f", in chain {number % chains + 1} of {chains}" if chains else ""
        print(f"  {kind} {array_name(jobs)}: time limit {minutes} min, longest estimate {longest}{after}")


def sacct(ids):
    """{job id: final state} from Slurm's accounting, {} where there is none."""
    if not ids:
        return {}
    try:
        result = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    rows = (line.split("|", 1) for line in result.stdout.splitlines() if "|" in line)
    return {job_id: state for job_id, state in rows} if result.returncode == 0 else {}


def print_status(queue):
    """One line per job: its plan state, and its Slurm job with Slurm's state of it."""
    ledger = queue.ledger.read()
    listed = squeue() if ledger else {}
    finals = sacct([job_id for job_id in ledger.values() if job_id not in listed])
    counts = {}
    for job in queue.jobs:
        job_id = ledger.get(job.run_dir)
        counts[job.state] = counts.get(job.state, 0) + 1
        line = f"  {job.state:9} {job.name}"
        if job_id:
            state, reason, _ = listed.get(job_id, (finals.get(job_id, "gone from the queue"), "None", ""))
            line += f"  (Slurm job {job_id}: {state}{'' if reason == 'None' else ', ' + reason})"
        print(line)
    print("Sweep: " + ", ".join(f"{number} {state}" for state, number in counts.items()))


def cancel(queue):
    """scancel the jobs of this sweep's plan that the ledger names and that are still in the queue."""
    ledger = queue.ledger.read()
    listed = squeue() if ledger else {}
    ids = [ledger[job.run_dir] for job in queue.jobs
           if job.run_dir in ledger and listed.get(ledger[job.run_dir], ("",))[0] in ACTIVE]
    if not ids:
        print("No job of this sweep is in the Slurm queue.")
        return
    subprocess.run(["scancel", *ids], check=True)
    print(f"Cancelled {len(ids)} jobs of this sweep: {' '.join(ids)}")
