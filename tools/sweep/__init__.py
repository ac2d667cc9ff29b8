"""One resumable command for a whole benchmark: the run scripts' jobs, with their dependencies, on a
local work queue (GPUs or CPU slots) or on Slurm through submitit. Entry point: tools/sweep/cli.py."""
