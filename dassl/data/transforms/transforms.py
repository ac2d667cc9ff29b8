"""Dassl's build_transform for the choices CoOp-family configs use.

Train: random resized crop (or random crop / resize), flip, to tensor, normalise. Test: resize the
shorter side to max(INPUT.SIZE), centre crop, to tensor, normalise; with bicubic and CLIP's mean/std
this is exactly CLIP's own preprocessing.
"""
from torchvision.transforms import (
    CenterCrop,
    Compose,
    InterpolationMode,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

AVAI_CHOICES = ("random_flip", "random_resized_crop", "normalize", "random_crop", "center_crop")


def build_transform(cfg, is_train=True, choices=None):
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    for choice in choices:
        if choice not in AVAI_CHOICES:
            raise ValueError(f"Unknown INPUT.TRANSFORMS entry {choice!r}; supported: {list(AVAI_CHOICES)}")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ValueError(
            f"INPUT.INTERPOLATION must be one of {list(INTERPOLATION_MODES)}, got {cfg.INPUT.INTERPOLATION!r}"
        )
    target_size = f"{cfg.INPUT.SIZE[0]}x{cfg.INPUT.SIZE[1]}"
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if is_train:
        return _build_transform_train(cfg, choices, target_size, normalize)
    return _build_transform_test(cfg, choices, target_size, normalize)


def _build_transform_train(cfg, choices, target_size, normalize):
    print("Building transform_train")
    interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    tfm = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {target_size}")
        tfm.append(Resize(cfg.INPUT.SIZE, interpolation=interp_mode))
    if "random_crop" in choices:
        print(f"+ random crop (padding = {cfg.INPUT.CROP_PADDING})")
        tfm.append(RandomCrop(cfg.INPUT.SIZE, padding=cfg.INPUT.CROP_PADDING))
    if "random_resized_crop" in choices:
        scale = tuple(cfg.INPUT.RRCROP_SCALE)
        print(f"+ random resized crop (size={cfg.INPUT.SIZE}, scale={scale})")
        tfm.append(RandomResizedCrop(cfg.INPUT.SIZE, scale=scale, interpolation=interp_mode))
    if "center_crop" in choices:
        print(f"+ center crop (size: {target_size})")
        tfm.append(CenterCrop(cfg.INPUT.SIZE))
    if "random_flip" in choices:
        print("+ random flip")
        tfm.append(RandomHorizontalFlip())
    return _to_normalized_tensor(tfm, cfg, choices, normalize)


def _build_transform_test(cfg, choices, target_size, normalize):
    print("Building transform_test")
    interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    print(f"+ resize the smaller edge to {max(cfg.INPUT.SIZE)}")
    print(f"+ {target_size} center crop")
    tfm = [Resize(max(cfg.INPUT.SIZE), interpolation=interp_mode), CenterCrop(cfg.INPUT.SIZE)]
    return _to_normalized_tensor(tfm, cfg, choices, normalize)


def _to_normalized_tensor(tfm, cfg, choices, normalize):
    """The tail both pipelines share: tensor in [0, 1], then normalisation when asked for."""
    print("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm.append(normalize)
    return Compose(tfm)
