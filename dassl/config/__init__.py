from .checks import ConfigError, check_cfg
from .defaults import _C as cfg_default


def get_cfg_default():
    """A fresh copy of the defaults; callers extend and merge it."""
    return cfg_default.clone()
