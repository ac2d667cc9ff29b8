"""Checks of what every job of a Slurm sweep will need, made before anything is submitted: a job that
waits hours in the queue should not then fail on a missing dataset folder or CLIP weights file."""
import os.path as osp

import yaml

from clip import available_models
from clip.clip import local_weights_file
from clip.open_clip_models import is_open_clip_name
from datasets.sources import SOURCES

from .jobs import SOURCE_DATASET, TO_RUN, TRAINER_CONFIGS, SweepError


def check_data(jobs, data):
    """DATA exists and holds the folder of every dataset a job to run reads (datasets/sources.py)."""
    if not osp.isdir(data):
        raise SweepError(f"DATA={data} does not exist: set DATA to the datasets' root (docs/datasets.md)")
    needed = {job.dataset for job in jobs if job.state in TO_RUN}
    needed |= {SOURCE_DATASET for job in jobs if job.state in TO_RUN and job.script == "xd_train.sh"}
    missing = sorted(f"{name} ({SOURCES[name]['folder']}/)" for name in needed
                     if name in SOURCES and not osp.isdir(osp.join(data, SOURCES[name]["folder"])))
    if missing:
        raise SweepError(f"DATA={data} lacks what the sweep needs: {', '.join(missing)}; prepare them "
                         "(python -m datasets.prepare, docs/datasets.md) or leave them out with --datasets")


def backbone(job):
    """MODEL.BACKBONE.NAME as the job's train.py reads it: the last trailing option, else its config's."""
    options = job.args[job.args.index(job.cfg) + 1:]
    names = [options[n + 1] for n in range(0, len(options) - 1, 2) if options[n] == "MODEL.BACKBONE.NAME"]
    if names:
        return names[-1]
    with open(osp.join(TRAINER_CONFIGS, job.trainer, f"{job.cfg}.yaml")) as handle:
        config = yaml.safe_load(handle) or {}
    return ((config.get("MODEL") or {}).get("BACKBONE") or {}).get("NAME", "")


def check_weights(jobs):
    """Each CLIP weights file the jobs to run load is a file, an official model in the cache or an
    open_clip model already fetched (nodes often have no internet to download it)."""
    for name in sorted({backbone(job) for job in jobs if job.state in TO_RUN} - {""}):
        try:
            local = local_weights_file(name)
        except ValueError as error:  # an open_clip name refused (another kind of model, an unknown tag)
            raise SweepError(str(error)) from None
        if local and osp.isfile(local):
            continue
        if name not in available_models() and not is_open_clip_name(name):
            raise SweepError(f"MODEL.BACKBONE.NAME {name}: no such file, nor an official CLIP or open_clip model; "
                             "give the path of a weights file the nodes can read")
        where = f"not in the cache ({local})" if local else "not fetched yet"
        raise SweepError(f"CLIP weights {name} are {where}, and the nodes may have no internet: fetch them "
                         f"first (python -c \"import clip; clip.load('{name}')\") or give MODEL.BACKBONE.NAME "
                         "/path/to/weights")