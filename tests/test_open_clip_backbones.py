"""open_clip's CLIP models as backbones, with open_clip itself as the reference (no weights downloaded).

Small open_clip architectures (custom model configs, registered with ``open_clip.add_model_config``) are
created by open_clip with random weights; the project's CLIP loaded from their state dict by name gives
open_clip's ``encode_image`` / ``encode_text`` and token ids, and every method trains a step and
evaluates on them (GELU and QuickGELU, widths other than 512/768, context lengths other than 77). Real
architectures are checked by their tensor names and shapes, real pretrained tags by what they resolve
to offline, and other kinds of model are refused with one line.
"""
import hashlib
import json

import open_clip
import pytest
import torch

import clip
from clip.open_clip_models import OpenCLIPError, architecture, open_clip_spec, verify_hub_blob
from clip.prompting import ClassPrompts, PromptTooLong
from dassl.engine import TRAINER_REGISTRY
from tests.helpers import REPO, run_main
from tools import bench
from trainers.common import BackboneMismatch, check_open_clip_inputs

ARCHS = {  # widths, head widths, MLP ratios, patch, image size and context length all off OpenAI's
    "mupl-oc-vit-gelu": dict(embed_dim=24, vision_cfg=dict(image_size=32, layers=3, width=96, head_width=32,
                                                           mlp_ratio=3.0, patch_size=8),
                             text_cfg=dict(context_length=24, vocab_size=49408, width=48, heads=2, layers=2,
                                           mlp_ratio=2.5)),
    "mupl-oc-vit-quickgelu": dict(embed_dim=40, quick_gelu=True,
                                  vision_cfg=dict(image_size=48, layers=2, width=64, head_width=16, patch_size=16),
                                  text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=4, layers=2)),
    "mupl-oc-rn": dict(embed_dim=32, vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=8, head_width=32,
                                                     patch_size=None),
                       text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)),
}
VITS = ["mupl-oc-vit-gelu", "mupl-oc-vit-quickgelu"]
TEXTS = ["a photo of a cat.", "An ORIGAMI   crane, folded!", "x"]
DEPTHS = {  # the tiny towers have 2 or 3 layers
    "IVLP": ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION", 2],
    "VPT": ["TRAINER.VPT.PROMPT_DEPTH_VISION", 2],
    "MaPLe": ["TRAINER.MAPLE.PROMPT_DEPTH", 2],
    "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 2],
}
TEN_METHODS = ["ZeroshotCLIP", "CoOp", "CoCoOp", "KgCoOp", "ProGrad", "IVLP", "VPT", "MaPLe", "PromptSRC", "MuPL"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """arch -> (open_clip's model, MODEL.BACKBONE.NAME of its weights file): open_clip's random weights,
    rounded to fp16 (the project's CLIP keeps OpenAI's fp16 weights), non-trivial norms and biases."""
    folder = tmp_path_factory.mktemp("open_clip_archs")
    for arch, cfg in ARCHS.items():
        (folder / f"{arch}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    built = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = open_clip.create_model(arch).eval()
        for param in model.parameters():
            if param.dim() == 1:
                param.data.add_(0.1 * torch.randn_like(param))
            param.data = param.data.half().float()
        path = folder / f"{arch}.pt"
        torch.save(model.state_dict(), path)
        built[arch] = model, f"{arch}/{path}"
    return built


def size_of(arch):
    return ARCHS[arch]["vision_cfg"]["image_size"]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_encoders_and_token_ids_equal_open_clips(models, arch):
    reference, name = models[arch]
    model = clip.load_clip_model(name).float()
    context_length = ARCHS[arch]["text_cfg"]["context_length"]
    tokens = open_clip.get_tokenizer(arch)(TEXTS)
    assert torch.equal(clip.tokenize(TEXTS, context_length), tokens)
    images = torch.randn(2, 3, size_of(arch), size_of(arch), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for ours, theirs in ((model.encode_image(images), reference.encode_image(images)),
                             (model.encode_text(tokens), reference.encode_text(tokens))):
            assert ours.shape == theirs.shape and theirs.abs().max() > 0.1
            assert torch.allclose(ours, theirs, atol=1e-5)


def test_class_prompts_take_the_models_context_length(models):
    model = clip.load_clip_model(models["mupl-oc-rn"][1])  # 16 tokens
    prompts = ClassPrompts(model, ["tabby cat"], n_ctx=4)
    assert prompts.token_prefix.shape[1] + 4 + prompts.token_suffix.shape[1] == 16
    with pytest.raises(PromptTooLong, match="this CLIP reads at most 16"):
        ClassPrompts(model, ["a very long class name that has far more than sixteen tokens in it"], n_ctx=4)


@pytest.mark.parametrize("arch", VITS)
@pytest.mark.parametrize("method", TEN_METHODS)
def test_every_method_trains_a_step_and_evaluates(models, arch, method):
    classnames = bench.class_names(5)
    cfg = bench.recipe_cfg(method, models[arch][1], size_of(arch), cpu=True, extra=DEPTHS.get(method, ()))
    getattr(TRAINER_REGISTRY.get(method), "validate_cfg", lambda _: None)(cfg)  # train.py's check before a run
    trainer = bench.build_trainer(cfg, classnames)
    image, label = bench.random_batch(2, len(classnames), size_of(arch), torch.device("cpu"))
    if method == "MaPLe":  # the coupling maps this model's text width to its image width
        coupling = trainer.model.prompt_learner.compound_prompt_projections[0]
        widths = ARCHS[arch]["text_cfg"]["width"], ARCHS[arch]["vision_cfg"]["width"]
        assert (coupling.in_features, coupling.out_features) == widths
    if method != "ZeroshotCLIP":
        trained = {name: param.detach().clone() for name, param in trainer.model.named_parameters()
                   if param.requires_grad}
        trainer.set_model_mode("train")
        summary = trainer.forward_backward({"img": image, "label": label})
        assert all(torch.isfinite(torch.tensor(value)) for value in summary.values())
        assert any(not torch.equal(param, trained[name]) for name, param in trainer.model.named_parameters()
                   if name in trained)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        logits = trainer.model_inference(image)
    assert logits.shape == (2, len(classnames)) and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["ViT-bigG-14", "ViT-g-14", "ViT-H-14-378-quickgelu", "RN50x4"])
def test_real_architectures_get_open_clips_tensor_names_and_shapes(arch):
    """Every tensor of open_clip's model (built on the meta device, no memory), by name and shape; depth cut
    to one block per stage, which changes no shape."""
    cfg = open_clip.get_model_config(arch)
    vision = cfg["vision_cfg"]
    vision["layers"] = [1, 1, 1, 1] if isinstance(vision["layers"], list) else 1
    cfg["text_cfg"]["layers"] = 1
    with torch.device("meta"):
        theirs = {name: tuple(t.shape) for name, t in open_clip.model.CLIP(**cfg).state_dict().items()}
    spec = open_clip_spec(f"{arch}/{open_clip.list_pretrained_tags_by_model(arch)[0]}")
    ours = clip.model.CLIP(**architecture(cfg, spec.quick_gelu)).state_dict()
    ours = {name: tuple(t.shape) for name, t in ours.items()}
    assert ours == theirs


@pytest.mark.parametrize("name, size, quick_gelu", [
    ("ViT-B-32/laion2b_s34b_b79k", 224, False), ("ViT-L-14/datacomp_xl_s13b_b90k", 224, False),
    ("ViT-B-32/metaclip_400m", 224, True),  # a QuickGELU tag under a GELU name: the weights' activation
    ("ViT-H-14-378-quickgelu/dfn5b", 378, True), ("ViT-bigG-14/laion2b_s39b_b160k", 224, False),
    ("RN50/yfcc15m", 224, True)])
def test_pretrained_tags_resolve_without_a_download(tmp_path, name, size, quick_gelu):
    spec = open_clip_spec(name, str(tmp_path))
    assert (spec.image_size, spec.quick_gelu, spec.mean, spec.std) == (size, quick_gelu, clip.clip.CLIP_MEAN,
                                                                      clip.clip.CLIP_STD)
    assert spec.hub_file[0] and clip.input_resolution(name) == size
    assert not list(tmp_path.iterdir())  # nothing fetched


@pytest.mark.parametrize("name, why", [
    ("ViT-B-16-SigLIP/webli", "a SigLIP model"), ("coca_ViT-B-32/laion2b_s13b_b90k", "a CoCa model"),
    ("EVA02-B-16/merged2b_s8b_b131k", "its image tower is the timm model eva02_base_patch16_clip_224"),
    ("xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k", "its text tower is the Hugging Face model xlm-roberta-base"),
    ("ViT-L-14-CLIPA/datacomp1b", "its tokenizer is bert-base-uncased"),
    ("ViT-M-16-alt/any", "its image tower sets ls_init_value = 0.0001")])
def test_other_kinds_are_refused_with_the_reason(name, why):
    with pytest.raises(OpenCLIPError, match=f"{name} is refused: {why}") as refused:
        open_clip_spec(name)
    assert "\n" not in str(refused.value)


def test_train_py_refuses_a_siglip_backbone_before_writing_anything(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, "--trainer", "CoOp", "--dataset-config-file",
                            REPO / "configs/datasets/oxford_pets.yaml", "--output-dir", out,
                            "MODEL.BACKBONE.NAME", "ViT-B-16-SigLIP/webli")
    assert code == 2 and err.count("\n") == 1 and "ViT-B-16-SigLIP/webli is refused: a SigLIP model" in err
    assert not out.exists()


def test_inputs_must_follow_the_models_size_mean_and_std(models):
    cfg = bench.recipe_cfg("CoOp", models["mupl-oc-rn"][1], 64, cpu=True)
    check_open_clip_inputs(cfg)
    for key, value in (("INPUT.SIZE", (224, 224)), ("INPUT.PIXEL_MEAN", [0.485, 0.456, 0.406])):
        wrong = cfg.clone()
        wrong.defrost()
        wrong.merge_from_list([key, value])
        with pytest.raises(BackboneMismatch, match=f"{key} is .*; allowed: .*{models['mupl-oc-rn'][1]}"):
            check_open_clip_inputs(wrong)


def test_an_hf_hub_repository_from_a_local_folder(models, tmp_path):
    """What a user copies to an offline machine: the repository's config (its own mean and std) and weights
    in <cache>/open_clip/hf-hub/ORG/REPO/."""
    reference, name = models["mupl-oc-vit-quickgelu"]
    folder = tmp_path / "open_clip" / "hf-hub" / "someone" / "tiny-clip"
    folder.mkdir(parents=True)
    config = {"model_cfg": ARCHS["mupl-oc-vit-quickgelu"], "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(reference.state_dict(), folder / "open_clip_pytorch_model.bin")
    model, preprocess = clip.load("hf-hub:someone/tiny-clip", download_root=str(tmp_path))
    assert (preprocess.transforms[-1].mean, preprocess.transforms[-1].std) == ((0.5,) * 3, (0.25,) * 3)
    tokens = clip.tokenize(TEXTS, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), reference.encode_text(tokens), atol=1e-5)


def test_run_json_hashes_the_file_an_open_clip_name_reads(models, tmp_path):
    """Provenance: the weights file behind ARCH/path, a hub repository copied by hand, and a tag's file in
    the hub cache are found without fetching, so swapping weights under the same name makes runs stale."""
    from tools.provenance import weights_file

    arch = "mupl-oc-vit-quickgelu"
    path = models[arch][1].split("/", 1)[1]
    assert weights_file(f"{arch}/{path}") == path
    repo = tmp_path / "open_clip" / "hf-hub" / "someone" / "tiny-clip"
    repo.mkdir(parents=True)
    (repo / "open_clip_config.json").write_text(json.dumps({"model_cfg": ARCHS[arch]}))
    (repo / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    assert weights_file("hf-hub:someone/tiny-clip", str(tmp_path)) == str(repo / "open_clip_pytorch_model.bin")
    name = "ViT-B-32/laion2b_s34b_b79k"
    assert weights_file(name, str(tmp_path)) is None  # not fetched: nothing to hash, and no download tried
    snapshot = (tmp_path / "open_clip" / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots"
                / "0123abc")
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    assert weights_file(name, str(tmp_path)) == str(snapshot / "open_clip_pytorch_model.bin")


def test_offline_hub_says_where_to_put_the_file(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OpenCLIPError) as missing:
        clip.load_clip_model("ViT-B-32/laion2b_s34b_b79k", download_root=str(tmp_path))
    message = str(missing.value)
    assert "\n" not in message and "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert f"put it in {tmp_path}/open_clip/ViT-B-32/laion2b_s34b_b79k/" in message
    assert "MODEL.BACKBONE.NAME ViT-B-32/path/to/open_clip_pytorch_model.bin" in message


def test_without_open_clip_one_line_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "open_clip", None)
    with pytest.raises(OpenCLIPError, match="needs the open_clip_torch package: pip install open_clip_torch"):
        clip.input_resolution("ViT-B-16/laion2b_s34b_b88k")
    assert clip.input_resolution("ViT-B/16") == 224  # OpenAI's names never import it


def test_a_hub_download_is_checked_against_its_published_sha256(tmp_path):
    content = b"weights"
    blob = tmp_path / "blobs" / hashlib.sha256(content).hexdigest()
    blob.parent.mkdir()
    blob.write_bytes(content)
    link = tmp_path / "open_clip_pytorch_model.bin"
    link.symlink_to(blob)
    verify_hub_blob(str(link))
    blob.write_bytes(b"weightz")  # damaged in place
    with pytest.raises(OpenCLIPError, match="does not match the SHA-256 the Hugging Face hub published"):
        verify_hub_blob(str(link))


def test_an_unknown_tag_lists_the_architectures_tags():
    with pytest.raises(OpenCLIPError, match="'laion9b' is neither a file nor a pretrained tag of ViT-B-16 "
                                            r"\(its tags: openai, laion400m_e31"):
        open_clip_spec("ViT-B-16/laion9b")


def test_bench_takes_an_open_clip_architecture_and_refuses_other_kinds(models):
    model = bench.random_clip("mupl-oc-vit-gelu")
    assert (model.context_length, model.visual.width, len(model.visual.transformer.resblocks)) == (24, 96, 3)
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert bench.backbone_name("mupl-oc-vit-gelu", "/w/clip.pt") == "mupl-oc-vit-gelu//w/clip.pt"
    with pytest.raises(SystemExit, match="bench: ViT-B-16-SigLIP is refused: a SigLIP model"):
        bench.random_clip("ViT-B-16-SigLIP")
