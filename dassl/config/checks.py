"""Config values a run cannot use, refused before anything is built or written.

Each refusal is a ConfigError whose message is one line naming the key, the bad value and the values
allowed; train.py prints it and exits 2. A trainer adds its own checks with a ``validate_cfg(cfg)``
classmethod raising ValueError (see ``train.check_request``).
"""


class ConfigError(ValueError):
    """A config value the run cannot use; the message names the key, the value and what is allowed."""


def require(key, value, allowed, ok):
    if not ok:
        raise ConfigError(f"{key} is {value!r}; allowed: {allowed}")


def check_cfg(cfg, training):
    """The engine's own keys; ``training``: the run trains (not --eval-only, not --no-train)."""
    batch_sizes = {"DATALOADER.TRAIN_X.BATCH_SIZE": cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
                   "DATALOADER.TEST.BATCH_SIZE": cfg.DATALOADER.TEST.BATCH_SIZE}
    for key, value in batch_sizes.items():
        require(key, value, "a whole number >= 1 (images per batch)", value >= 1)
    workers = cfg.DATALOADER.NUM_WORKERS
    require("DATALOADER.NUM_WORKERS", workers, "a whole number >= 0 (0 reads images in the main process)",
            workers >= 0)
    shots = cfg.DATASET.NUM_SHOTS
    require("DATASET.NUM_SHOTS", shots, "K >= 1 images per class, or -1 / 0 for all images (as CoOp)",
            shots >= -1)
    if training:
        epochs = cfg.OPTIM.MAX_EPOCH
        require("OPTIM.MAX_EPOCH", epochs, "a whole number >= 1 for a training run", epochs >= 1)
