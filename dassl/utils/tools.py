"""Small file and seeding helpers with Dassl's names."""
import difflib
import json
import os
import os.path as osp
import random
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_write


def mkdir_if_missing(dirname):
    os.makedirs(dirname, exist_ok=True)


def check_isfile(fpath):
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"')
    return isfile


def read_json(fpath):
    with open(fpath, "r") as handle:
        return json.load(handle)


def write_json(obj, fpath):
    """Atomic: a crash while writing leaves the previous file, never half a JSON document."""
    with atomic_write(fpath, mode="w") as handle:
        json.dump(obj, handle, indent=4, separators=(",", ": "))


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def collect_env_info():
    """torch's environment report plus the Pillow version, for the log's provenance block."""
    from torch.utils.collect_env import get_pretty_env_info

    try:
        env_str = get_pretty_env_info()
    except (OSError, RuntimeError, ValueError) as error:
        env_str = f"(torch environment report unavailable: {error})"
    return env_str + f"\n        Pillow ({Image.__version__})"


def listdir_nohidden(path, sort=False):
    items = [name for name in os.listdir(path) if not name.startswith(".")]
    if sort:
        items.sort()
    return items


def read_image(path):
    """An RGB PIL image; a missing, unreadable or decompression-bomb file fails with its path in the
    message. PIL's warning for a large image below the bomb limit is not repeated for every such image
    (the images are the dataset's own, listed in its split)."""
    if not osp.exists(path):
        raise FileNotFoundError(f'No image at "{path}"')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise OSError(f'Cannot read image "{path}": {error} Shrink the image, or remove it from the '
                      "dataset") from error
    except (UnidentifiedImageError, OSError) as error:
        raise OSError(f'Cannot read image "{path}": {error}') from error


def check_availability(requested, available):
    if requested not in available:
        matches = difflib.get_close_matches(str(requested), list(available), n=1)
        hint = f' Do you mean "{matches[0]}"?' if matches else ""
        raise ValueError(
            f'The requested one is expected to belong to {sorted(available)}, but got "{requested}".'
            + hint
        )


def tolist_if_not(x):
    return x if isinstance(x, list) else [x]
