"""Load CLIP by name or path, tokenize text; the public surface of OpenAI's ``clip`` module."""
import os
import os.path as osp
import pickle
import re
import warnings
import zipfile

import torch
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

from .download import DownloadError, download_file, sha256_of
from .model import build_model, missing_keys
from .simple_tokenizer import END, START, get_tokenizer

__all__ = ["available_models", "input_resolution", "load", "load_clip_model", "load_state_dict_from", "tokenize",
           "CLIPWeightsError"]

# Official weights; each URL carries the file's SHA256 as its second-to-last path component.
_MODELS = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": "https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": "https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
# The image size each official model takes (its positional embedding is fixed to it).
_INPUT_RESOLUTIONS = {"RN50": 224, "RN101": 224, "RN50x4": 288, "RN50x16": 384, "RN50x64": 448, "ViT-B/32": 224,
                      "ViT-B/16": 224, "ViT-L/14": 224, "ViT-L/14@336px": 336}
CACHE_ENV = "CLIP_CACHE_DIR"
MAX_KEYS_SHOWN = 8  # of the keys a weights file lacks, named in the message
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPWeightsError(RuntimeError):
    """CLIP weights that cannot be had or read; the message names the file and how to fix it."""


def available_models():
    return list(_MODELS.keys())


def input_resolution(name, download_root=None):
    """The input resolution of an official or open_clip model name, or None (a path: known once its
    weights load). An open_clip name of another kind than CLIP is refused here (``OpenCLIPError``)."""
    from .open_clip_models import is_open_clip_name, open_clip_spec  # imports clip.clip: imported on use

    if is_open_clip_name(name):
        return open_clip_spec(name, download_root).image_size
    return _INPUT_RESOLUTIONS.get(name)


def default_cache_dir():
    return os.environ.get(CACHE_ENV) or osp.expanduser("~/.cache/clip")


def local_weights_file(name, download_root=None):
    """The local file the weights of ``name`` are read from, fetching nothing: a path, the cache file of
    an official model (whether or not it is there yet), or an open_clip name's file once it is local;
    None for an open_clip name not fetched yet, and for a name that is none of these."""
    if osp.isfile(name):
        return osp.abspath(name)
    if name in _MODELS:
        return osp.join(download_root or default_cache_dir(), osp.basename(_MODELS[name]))
    from .open_clip_models import cached_weights_file, is_open_clip_name

    return cached_weights_file(name, download_root) if is_open_clip_name(name) else None


def _download(url, root=None):
    """The verified local copy of an official weights file, downloading it when missing."""
    root = root or default_cache_dir()
    destination = osp.join(root, osp.basename(url))
    try:
        return download_file(url, destination, sha256=url.split("/")[-2])
    except DownloadError as error:
        raise CLIPWeightsError(f"CLIP weights {osp.basename(url)} are not available: {error}") from error


def official_checksums():
    """The SHA256 of every official weights file (the second-to-last component of its URL)."""
    return {url.split("/")[-2] for url in _MODELS.values()}


def _zip_names(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise CLIPWeightsError(f"Cannot read CLIP weights from {path}: {error}") from error


def _check_crcs(path):
    """torch.save writes a zip with a CRC-32 per entry: a damaged copy is refused, instead of loading as
    wrong numbers (a zeroed block would become zero weights)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        damaged = f"? ({error})"
    if damaged is not None:
        raise CLIPWeightsError(
            f"{path} is corrupt: the CRC-32 of its entry {damaged} does not match its content (a damaged "
            "copy or an interrupted transfer); copy or download the file again"
        )


def _is_torchscript(names):
    return any(name.endswith("constants.pkl") or "/code/" in name for name in names)


def _read_official_archive(path, verified):
    """TorchScript runs the code it carries when loaded: only OpenAI's own archives, known by their
    checksum, go through ``torch.jit.load``."""
    if not verified and sha256_of(path) not in official_checksums():
        raise CLIPWeightsError(
            f"{path} is a TorchScript archive that matches no official CLIP checksum; loading it would run "
            "the code inside it, so it is refused. If it is an official CLIP file, it is damaged: download "
            "it again. Otherwise, on a machine where you trust it, save its weights with "
            f"torch.save(torch.jit.load({path!r}).state_dict(), 'weights.pt') and pass that file"
        )
    with warnings.catch_warnings():  # OpenAI ships TorchScript; torch now flags it as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(path, map_location="cpu").state_dict()


def unpickler_reason(error):
    """What torch's weights-only unpickler refused, without torch's advice to load the file with
    ``weights_only`` off (which would run whatever code it holds)."""
    match = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Please use|Check the documentation|$)", str(error),
                      re.DOTALL)
    reason = " ".join(match.group(1).split()) if match else str(error).splitlines()[0]
    return reason.rstrip(".")


def _read_weights(path, verified=False):
    """A state dict from a plain ``torch.save`` file (tensors only), or from an official TorchScript
    archive; ``verified``: the file's checksum was already checked against the official one."""
    if zipfile.is_zipfile(path):
        if _is_torchscript(_zip_names(path)):
            return _read_official_archive(path, verified)  # its checksum proves origin and integrity
        if not verified:
            _check_crcs(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CLIPWeightsError(
            f"Cannot read CLIP weights from {path} as tensors only ({unpickler_reason(error)}): the file is "
            "damaged, or it holds pickled Python objects, which could run code when loaded. On a machine where "
            "you trust it, save its state_dict() with torch.save and pass that file"
        ) from error
    except (RuntimeError, EOFError, ValueError) as error:
        raise CLIPWeightsError(f"Cannot read CLIP weights from {path}: {error}") from error
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CLIPWeightsError(f"{path} does not hold a CLIP state dict (it holds a {type(loaded).__name__})")
    missing = missing_keys(loaded)
    if missing:
        shown = ", ".join(missing[:MAX_KEYS_SHOWN]) + (", ..." if len(missing) > MAX_KEYS_SHOWN else "")
        raise CLIPWeightsError(f"{path} is not a complete CLIP state dict: it lacks {len(missing)} of CLIP's keys "
                               f"({shown}); download the weights again, or pass the file they were saved to")
    return loaded


def load_state_dict_from(name_or_path, download_root=None):
    """CLIP weights from a ``_MODELS`` name (cache, else download) or from a file the user names."""
    if osp.isfile(name_or_path):
        return _read_weights(name_or_path)
    if name_or_path in _MODELS:
        path = _download(_MODELS[name_or_path], download_root)
        return _read_weights(path, verified=True)
    raise CLIPWeightsError(
        f"Model {name_or_path!r} is neither a file nor one of {available_models()}; give a model name, "
        "an open_clip name (ViT-B-16/laion2b_s34b_b88k, hf-hub:ORG/REPO) or the path to a weights file "
        "(MODEL.BACKBONE.NAME /path/to/ViT-B-16.pt)"
    )


def _convert_to_rgb(image):
    return image.convert("RGB")


def _transform(n_px, mean=CLIP_MEAN, std=CLIP_STD):
    return Compose([
        Resize(n_px, interpolation=InterpolationMode.BICUBIC),
        CenterCrop(n_px),
        _convert_to_rgb,
        ToTensor(),
        Normalize(mean, std),
    ])


def load_clip_model(name_or_path, download_root=None):
    """An fp16 CLIP in eval mode: an OpenAI name or weights file, or an open_clip name
    (``clip/open_clip_models.py``: ``ARCH/TAG``, ``ARCH/path``, ``hf-hub:ORG/REPO``)."""
    from .open_clip_models import is_open_clip_name, load_open_clip_model

    if is_open_clip_name(name_or_path):
        return load_open_clip_model(name_or_path, download_root)
    return build_model(load_state_dict_from(name_or_path, download_root))


def load(name, device="cpu", jit=False, download_root=None):
    """``(model, preprocess)``; fp16 on the GPU as OpenAI ships it, fp32 on the CPU. An open_clip model's
    preprocessing uses the mean and std it was trained with."""
    from .open_clip_models import is_open_clip_name, open_clip_spec

    if jit:
        raise ValueError("jit=True is not supported: this CLIP is rebuilt from the weights (jit=False)")
    device = torch.device(device)
    model = load_clip_model(name, download_root).to(device)
    if device.type == "cpu":
        model.float()
    statistics = (CLIP_MEAN, CLIP_STD)
    if is_open_clip_name(name):
        spec = open_clip_spec(name, download_root)
        statistics = (spec.mean, spec.std)
    return model, _transform(model.visual.input_resolution, *statistics)


def tokenize(texts, context_length=77, truncate=False):
    """(N, context_length) token ids: SOT, the BPE ids, EOT, zero padding."""
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = get_tokenizer()
    sot, eot = tokenizer.encoder[START], tokenizer.encoder[END]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        tokens = [sot] + tokenizer.encode(text) + [eot]
        if len(tokens) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {context_length}")
            tokens = tokens[:context_length]
            tokens[-1] = eot
        result[i, : len(tokens)] = torch.tensor(tokens)
    return result
