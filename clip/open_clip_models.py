"""open_clip's CLIP models (LAION, DataComp, MetaCLIP, DFN, ...) built as this project's CLIP.

Names (``MODEL.BACKBONE.NAME``): ``ARCH/TAG`` as ``open_clip.list_pretrained()`` lists them
(``ViT-B-16/laion2b_s34b_b88k``), ``ARCH/path/to/weights`` (a weights file of that architecture, read
locally), and ``hf-hub:ORG/REPO`` (a Hugging Face repository holding ``open_clip_config.json`` and the
weights). Most of these models are OpenAI's architecture exactly, with other widths, head widths, MLP ratios,
image sizes, context lengths and GELU or QuickGELU; their state dicts use OpenAI's parameter names, so the
project's CLIP takes them as they are and every trainer runs unchanged. Models of another kind (CoCa,
SigLIP, EVA and other timm image towers, Hugging Face text towers, layer scale, other pooling or norm
placements) are refused with one line, since this CLIP would compute something else.

open_clip_torch is imported only here, when such a name is used. Weights come through open_clip's own
download (the Hugging Face hub), cached under ``<CLIP cache>/open_clip/hub``; a file the user puts in
``<CLIP cache>/open_clip/<ARCH>/<TAG>/`` (or ``.../hf-hub/ORG/REPO/``) is used first, so an offline machine
works, and a path always works.
"""
import dataclasses
import json
import os.path as osp
import re

from torch import nn

from .clip import _MODELS, CLIPWeightsError, _read_weights, default_cache_dir
from .download import sha256_of
from .model import QuickGELU, build_clip

HF_HUB = "hf-hub:"
INSTALL = "pip install open_clip_torch"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLIP_VOCAB_SIZE = 49408
# Config keys that change no number of a frozen, pretrained model (training-only or output-format options).
IGNORED = {"patch_dropout", "output_tokens", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias",
           "timm_drop", "timm_drop_path", "attn_pooler_queries", "attn_pooler_heads", "final_ln_after_pool",
           "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "pad_id", "eos_id"}


class OpenCLIPError(CLIPWeightsError, ValueError):
    """An open_clip name that cannot be used (refused kind, unknown name, missing package or weights): a
    ValueError, so train.py refuses it before a run starts, and a CLIPWeightsError once a run loads it."""


@dataclasses.dataclass(frozen=True)
class OpenCLIPSpec:
    """What a name resolves to without reading weights: the model config, the activation, the image
    preprocessing the model was trained with, and where its weights come from."""

    name: str
    model_cfg: dict
    quick_gelu: bool
    image_size: int
    mean: tuple
    std: tuple
    folder: str  # where a user may put the weights by hand (offline)
    hub_file: tuple = None  # (repo, filename or None) on the Hugging Face hub
    url: str = ""  # open_clip's own download URL, for tags without a hub entry
    file: str = ""  # a local weights file the name points at


def is_open_clip_name(name):
    """``hf-hub:...`` or ``ARCH/REST`` that is neither an existing file nor one of OpenAI's names."""
    if name.startswith(HF_HUB):
        return True
    if name in _MODELS or osp.isfile(name) or "/" not in name:
        return False
    return re.fullmatch(r"[A-Za-z][\w.+-]*", name.split("/", 1)[0]) is not None


def import_open_clip(name):
    try:
        import open_clip
    except ImportError as error:
        raise OpenCLIPError(f"MODEL.BACKBONE.NAME {name} is read as an open_clip model (neither a file nor one of "
                            f"OpenAI's names), which needs the open_clip_torch package: {INSTALL}") from error
    return open_clip


def open_clip_spec(name, cache_dir=None):
    """The ``OpenCLIPSpec`` of an open_clip name; refuses a model that is not CLIP's architecture."""
    open_clip = import_open_clip(name)
    root = osp.join(cache_dir or default_cache_dir(), "open_clip")
    if name.startswith(HF_HUB):
        return _hub_repo_spec(open_clip, name, root)
    return _arch_spec(open_clip, name, root)


def _preprocessing(open_clip, overrides):
    base = dataclasses.asdict(open_clip.transform.PreprocessCfg())
    base.update({key: value for key, value in overrides.items() if key in base})
    return tuple(base["mean"]), tuple(base["std"])


def _image_size(model_cfg, name):
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise OpenCLIPError(f"{name} is refused: its images are {size[0]}x{size[1]}; this CLIP takes square images")
        size = size[0]
    return int(size)


def _arch_spec(open_clip, name, root):
    arch, rest = name.split("/", 1)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise OpenCLIPError(f"MODEL.BACKBONE.NAME {name} is neither a file, one of OpenAI's models "
                            f"({', '.join(_MODELS)}), nor an open_clip model: open_clip has no architecture "
                            f"{arch!r} (open_clip.list_models())")
    check_clip_architecture(model_cfg, name)
    folder = osp.join(root, arch, rest.replace("/", "_"))
    if osp.isfile(rest):
        mean, std = _preprocessing(open_clip, {})
        return OpenCLIPSpec(name, model_cfg, bool(model_cfg.get("quick_gelu")), _image_size(model_cfg, name), mean,
                            std, folder, file=rest)
    tag = open_clip.pretrained.get_pretrained_cfg(arch, rest)
    if not tag:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise OpenCLIPError(f"MODEL.BACKBONE.NAME {name}: {rest!r} is neither a file nor a pretrained tag of {arch} "
                            f"(its tags: {', '.join(tags) or 'none'}); give ARCH/TAG or ARCH/path/to/weights")
    hub = None
    if tag.get("hf_hub"):
        repo, filename = osp.split(tag["hf_hub"])
        hub = (repo, filename or None)
    mean, std = _preprocessing(open_clip, tag)
    # A tag trained with QuickGELU under a GELU architecture name: its weights need QuickGELU (open_clip
    # itself only warns and builds GELU).
    quick_gelu = bool(model_cfg.get("quick_gelu") or tag.get("quick_gelu"))
    return OpenCLIPSpec(name, model_cfg, quick_gelu, _image_size(model_cfg, name), mean, std, folder, hub_file=hub,
                        url=tag.get("url", ""))


def _hub_repo_spec(open_clip, name, root):
    repo = name[len(HF_HUB):]
    folder = osp.join(root, "hf-hub", repo)
    local = osp.join(folder, CONFIG_FILE)
    path = local if osp.isfile(local) else _from_hub(open_clip, name, repo, CONFIG_FILE, root, folder)
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise OpenCLIPError(f"{path} has no 'model_cfg': {name} is not an open_clip model repository")
    check_clip_architecture(model_cfg, name)
    mean, std = _preprocessing(open_clip, config.get("preprocess_cfg", {}))
    return OpenCLIPSpec(name, model_cfg, bool(model_cfg.get("quick_gelu")), _image_size(model_cfg, name), mean, std,
                        folder, hub_file=(repo, None))


def _from_hub(open_clip, name, repo, filename, root, folder):
    """open_clip's own hub download (it prefers a .safetensors twin), into the project's cache."""
    try:
        return open_clip.pretrained.download_pretrained_from_hf(repo, filename=filename,
                                                                cache_dir=osp.join(root, "hub"))
    except (OSError, RuntimeError, ValueError) as error:
        shown = filename or WEIGHT_FILES[-1]
        if name.startswith(HF_HUB):
            instead = f"put it in {folder}/ with {CONFIG_FILE} and {WEIGHT_FILES[-1]} of that repository"
        else:
            instead = f"put it in {folder}/, or pass its path: MODEL.BACKBONE.NAME {name.split('/')[0]}/path/to/{shown}"
        reason = str(error).splitlines()[0].split("Last error: ")[-1]
        raise OpenCLIPError(
            f"{name}: cannot fetch {shown} of {repo} from the Hugging Face hub ({reason}). On an offline machine, "
            f"download https://huggingface.co/{repo}/resolve/main/{shown} elsewhere and {instead}"
        ) from error


def check_clip_architecture(model_cfg, name):
    """One line saying why a model is not CLIP's architecture (what this CLIP computes exactly)."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    kinds = [
        ("multimodal_cfg" in model_cfg, "a CoCa model (it has a captioning text decoder)"),
        (model_cfg.get("init_logit_bias") is not None, "a SigLIP model (sigmoid loss with a logit bias)"),
        (bool(vision.get("timm_model_name")), f"its image tower is the timm model {vision.get('timm_model_name')}, "
                                              "not CLIP's ViT or ModifiedResNet"),
        (bool(text.get("hf_model_name")), f"its text tower is the Hugging Face model {text.get('hf_model_name')}"),
        (bool(text.get("hf_tokenizer_name")) or text.get("vocab_size", CLIP_VOCAB_SIZE) != CLIP_VOCAB_SIZE,
         f"its tokenizer is {text.get('hf_tokenizer_name') or 'another vocabulary'}, not CLIP's BPE"),
        (bool(model_cfg.get("custom_text")), "its text tower is a custom one (open_clip's CustomTextCLIP)"),
    ]
    for refused, why in kinds:
        if refused:
            _refuse(name, why)
    known_top = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale",
                 "init_logit_bias", "nonscalar_logit_scale"}
    for key in model_cfg:
        if key not in known_top:
            _refuse(name, f"its model config has {key!r}, which this CLIP does not compute")
    _check_tower(name, "image", vision, _defaults("CLIPVisionCfg"), {"layers", "width", "head_width", "mlp_ratio",
                                                                     "patch_size", "image_size"})
    _check_tower(name, "text", text, _defaults("CLIPTextCfg"), {"context_length", "vocab_size", "width", "heads",
                                                               "layers", "mlp_ratio"})


def _defaults(config_class):
    """The default of every option of open_clip's tower config (open_clip.model.CLIPVisionCfg, ...)."""
    from open_clip import model as open_clip_model
    return {field.name: field.default for field in dataclasses.fields(getattr(open_clip_model, config_class))}


def _check_tower(name, tower, config, defaults, shapes):
    for key, value in config.items():
        if key in shapes or key in IGNORED:
            continue
        if key not in defaults:
            _refuse(name, f"its {tower} tower has the option {key!r}, which this CLIP does not compute")
        if value != defaults[key] and not (key == "block_type" and value == "default"):
            _refuse(name, f"its {tower} tower sets {key} = {value!r} (CLIP's architecture: {defaults[key]!r}), "
                          "which this CLIP does not compute")


def _refuse(name, why):
    raise OpenCLIPError(f"{name} is refused: {why}. This project's CLIP computes OpenAI's architecture (ViT or "
                        "ModifiedResNet, GELU or QuickGELU, any widths and sizes) exactly and nothing else; choose "
                        "a CLIP model (docs/running.md, Backbones)")


def architecture(model_cfg, quick_gelu):
    """The project CLIP's constructor arguments for an open_clip model config."""
    vision, text = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    vision_width, text_width = vision.get("width", 768), text.get("width", 512)
    layers = vision.get("layers", 12)
    resnet = isinstance(layers, (tuple, list))
    return dict(
        embed_dim=model_cfg["embed_dim"],
        image_resolution=_image_size(model_cfg, "this model"),
        vision_layers=tuple(layers) if resnet else layers,
        vision_width=vision_width,
        vision_patch_size=None if resnet else vision.get("patch_size", 16),
        context_length=text.get("context_length", 77),
        vocab_size=text.get("vocab_size", CLIP_VOCAB_SIZE),
        transformer_width=text_width,
        transformer_heads=text.get("heads", 8),
        transformer_layers=text.get("layers", 12),
        vision_head_width=vision.get("head_width", 64),
        vision_mlp_width=int(vision_width * vision.get("mlp_ratio", 4.0)),
        text_mlp_width=int(text_width * text.get("mlp_ratio", 4.0)),
        act_layer=QuickGELU if quick_gelu else nn.GELU,
    )


def build_from_open_clip(state_dict, model_cfg, quick_gelu, source="the weights"):
    """An fp16 CLIP in eval mode from an open_clip CLIP state dict (OpenAI's names; strict)."""
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    state_dict.pop("attn_mask", None)  # open_clip's causal mask buffer (this CLIP builds its own)
    if "logit_scale" in state_dict:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(())  # open_clip's nonscalar_logit_scale
    try:
        return build_clip(state_dict, architecture(model_cfg, quick_gelu))
    except RuntimeError as error:  # load_state_dict names the missing, unexpected and misshapen tensors
        raise OpenCLIPError(f"{source} do not fit the model config: {' '.join(str(error).split())}") from error


def load_open_clip_model(name, cache_dir=None):
    """The project's fp16 CLIP of an open_clip name, its weights from the user's folder, else the hub."""
    spec = open_clip_spec(name, cache_dir)
    path = spec.file or _weights_path(spec, cache_dir)
    return build_from_open_clip(read_open_clip_weights(path), spec.model_cfg, spec.quick_gelu, path)


def _user_file(spec):
    """A weights file the user put in ``spec.folder`` (or open_clip's URL download left there), else None."""
    names = [spec.hub_file[1]] if spec.hub_file and spec.hub_file[1] else []
    names += list(WEIGHT_FILES) + ([osp.basename(spec.url)] if spec.url else [])
    for filename in names:
        candidate = osp.join(spec.folder, filename)
        if osp.isfile(candidate):
            return candidate
    return None


def cached_weights_file(name, cache_dir=None):
    """The local file an open_clip name's weights are read from, fetching nothing (None when it is not
    there): what run.json hashes, so swapped weights under the same name make a run stale."""
    spec = open_clip_spec(name, cache_dir)
    found = spec.file or _user_file(spec)
    if found or not spec.hub_file:
        return found
    from huggingface_hub import try_to_load_from_cache

    repo, filename = spec.hub_file
    hub = osp.join(cache_dir or default_cache_dir(), "open_clip", "hub")
    for candidate in [filename] if filename else list(WEIGHT_FILES):
        path = try_to_load_from_cache(repo, candidate, cache_dir=hub)
        if isinstance(path, str) and osp.isfile(path):
            return path
    return None


def _weights_path(spec, cache_dir):
    """A file the user put in ``spec.folder``, else open_clip's download (hub, or its URL with its checksum)."""
    found = _user_file(spec)
    if found:
        return found
    open_clip = import_open_clip(spec.name)
    root = osp.join(cache_dir or default_cache_dir(), "open_clip")
    if spec.hub_file:
        repo, filename = spec.hub_file
        path = _from_hub(open_clip, spec.name, repo, filename, root, spec.folder)
        verify_hub_blob(path)
        return path
    try:
        return open_clip.pretrained.download_pretrained_from_url(spec.url, cache_dir=spec.folder)
    except (OSError, RuntimeError) as error:
        raise OpenCLIPError(f"{spec.name}: cannot fetch {spec.url} ({error}). On an offline machine, download it "
                            f"elsewhere and put it in {spec.folder}/") from error


def verify_hub_blob(path):
    """The hub publishes each large file's SHA-256 (its LFS id), under which huggingface_hub stores the
    blob: a damaged or truncated copy is refused rather than loaded as wrong numbers."""
    blob = osp.realpath(path)
    expected = osp.basename(blob)
    if re.fullmatch(r"[0-9a-f]{64}", expected) is None:
        return  # a small file the hub keeps in git, published without a SHA-256
    if sha256_of(blob) != expected:
        raise OpenCLIPError(f"{path} does not match the SHA-256 the Hugging Face hub published for it (a damaged or "
                            f"interrupted download): delete {blob} and run again")


def read_open_clip_weights(path):
    """The state dict of an open_clip weights file: safetensors, or a torch file read as tensors only."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except (OSError, RuntimeError, ValueError) as error:  # safetensors raises SafetensorError (an OSError)
            raise OpenCLIPError(f"Cannot read open_clip weights from {path}: {error}") from error
    return _read_weights(path)
