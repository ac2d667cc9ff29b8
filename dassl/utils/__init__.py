from .atomic import atomic_write
from .logger import setup_logger
from .meters import AverageMeter, MetricMeter
from .registry import Registry
from .tools import (
    check_availability,
    check_isfile,
    collect_env_info,
    listdir_nohidden,
    mkdir_if_missing,
    read_image,
    read_json,
    set_random_seed,
    tolist_if_not,
    write_json,
)
from .torchtools import *  # noqa: F401,F403  (the names listed in torchtools.__all__)
