"""Zero-shot CLIP, CoOp and CoCoOp on a tiny random CLIP, and the shared precision handling."""
import pytest
import torch

import clip
from clip.tiny import tiny_state_dict
from tests.helpers import assert_same_loss_gradients, assert_same_values_and_gradients
from trainers import cocoop, coop, zsclip
from tools.bench import reference_text
from trainers.common import (
    TemplateTextFeatures,
    cast_clip,
    default_trainer_node,
    effective_precision,
    make_grad_scaler,
    normalize,
)
from trainers.templates import dataset_template

CLASSNAMES = ["abyssinian", "great_pyrenees", "pug", "sphynx"]
BATCH = 3


@pytest.fixture(scope="module")
def clip_model():
    return cast_clip(clip.build_model(tiny_state_dict(arch="vit", seed=0)), "fp32")


@pytest.fixture(scope="module")
def images():
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_cocoop_batched_truncated_text_matches_the_per_image_loop(clip_model, images):
    """Same logits, and same prompt-learner gradients for the same loss, as CoCoOp's 77-token loop."""
    torch.manual_seed(0)
    model = cocoop.CoCoOpCLIP(
        default_trainer_node(cocoop, "COCOOP", N_CTX=4, CTX_INIT="a photo of a"), CLASSNAMES, clip_model
    )
    params = list(model.prompt_learner.parameters())
    labels = torch.arange(BATCH) % len(CLASSNAMES)
    logits = model(images)
    image_features = model.encode_image(images)
    ctx = model.prompt_learner(image_features)
    per_image = [model.class_prompts.assemble(image_ctx) for image_ctx in ctx]
    assert all(prompts.shape[1] == 77 for prompts in per_image)
    text = normalize(reference_text(clip_model, per_image, model.class_prompts.eot))
    expected = model.logit_scale.exp() * torch.einsum("be,bce->bc", image_features, text)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert_same_loss_gradients(logits, expected, labels, params)


def test_cocoop_meta_net_is_cocoops_bottleneck(clip_model):
    model = cocoop.CoCoOpCLIP(default_trainer_node(cocoop, "COCOOP"), CLASSNAMES, clip_model)
    net = model.prompt_learner.meta_net
    assert net.linear1.in_features == model.embed_dim
    assert net.linear1.out_features == model.embed_dim // 16
    assert net.linear2.out_features == model.ctx_dim
    assert model.prompt_learner.ctx.shape == (16, model.ctx_dim)
    assert model.prompt_learner.ctx.dtype == torch.float32


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_class_token_position(clip_model, images, position):
    node = default_trainer_node(coop, "COOP", N_CTX=4, CLASS_TOKEN_POSITION=position)
    model = coop.CoOpCLIP(node, CLASSNAMES, clip_model)
    ctx = torch.full((4, model.ctx_dim), 7.0)
    prompts = coop.place_class_name(model.class_prompts, ctx, position)
    assert prompts.shape == model.class_prompts.assemble(ctx).shape
    index = CLASSNAMES.index("great_pyrenees")
    name_len = int(model.class_prompts.name_lens[index])
    name = model.class_prompts.token_suffix[index, :name_len]
    start = {"end": 5, "middle": 3, "front": 1}[position]
    assert torch.equal(prompts[index, start : start + name_len], name)
    assert torch.equal(prompts[index, 5 + name_len :], model.class_prompts.token_suffix[index, name_len:])
    assert model(images).shape == (BATCH, len(CLASSNAMES))


def test_coop_shared_context_gives_the_assembled_prompts_features_and_gradients(clip_model):
    """With one context and the class name last, [SOS] ctx runs once for all classes (the fast path); the
    features and the gradient reaching ctx must be those of every prompt assembled and run whole."""
    model = coop.CoOpCLIP(default_trainer_node(coop, "COOP", N_CTX=4), CLASSNAMES, clip_model)
    ctx = model.prompt_learner.ctx
    whole = model.encode_prompts(model.class_prompts.assemble(ctx), model.class_prompts.eot)
    assert_same_values_and_gradients(model.class_text(), whole, ctx)


def test_coop_class_specific_context(clip_model, images):
    model = coop.CoOpCLIP(default_trainer_node(coop, "COOP", N_CTX=2, CSC=True), CLASSNAMES, clip_model)
    assert model.prompt_learner.ctx.shape == (len(CLASSNAMES), 2, model.ctx_dim)
    model(images).sum().backward()
    assert model.prompt_learner.ctx.grad.abs().sum(dim=(1, 2)).gt(0).all()


def test_coop_ctx_init_sets_the_context_length(clip_model):
    model = coop.CoOpCLIP(default_trainer_node(coop, "COOP", CTX_INIT="a photo of a"), CLASSNAMES, clip_model)
    assert torch.equal(model.prompt_learner.ctx.data, model.class_prompts.ctx_init_vectors().float())


def test_zeroshot_uses_the_dataset_template_once_per_class_set(clip_model, images):
    template = dataset_template("OxfordPets")
    assert template == "a photo of a {}, a type of pet."
    assert dataset_template("ToyShapes") == "a photo of a {}."
    model = zsclip.ZeroshotModel(clip_model, CLASSNAMES, template)
    logits = model(images)
    texts = [template.format(name.replace("_", " ")) for name in CLASSNAMES]
    with torch.no_grad():
        text = normalize(clip_model.encode_text(clip.tokenize(texts)))
        image = normalize(clip_model.visual(images))
    assert torch.allclose(logits, clip_model.logit_scale.exp() * image @ text.t(), atol=1e-4)
    assert model.class_features(CLASSNAMES) is model.class_features(CLASSNAMES)


def test_template_features_are_recomputed_for_another_class_set(clip_model):
    features = TemplateTextFeatures(clip_model, "a photo of a {}.")
    assert features(CLASSNAMES).shape[0] == 4
    assert features(["pug"]).shape[0] == 1


def test_precision_choices():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert effective_precision("fp16", cpu) == "fp32"
    assert effective_precision("fp16", gpu) == "fp16"
    assert effective_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError):
        effective_precision("int8", cpu)
    assert make_grad_scaler("fp32", cpu) is None
    assert not make_grad_scaler("amp", cpu).is_enabled()


def test_bf16_casts_the_half_tensors_only(images):
    model = clip.build_model(tiny_state_dict(arch="vit", seed=0))
    kept = {name for name, p in model.named_parameters() if p.dtype == torch.float32}
    model = cast_clip(model, "bf16")
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if name in kept else torch.bfloat16)
    cocoop_model = cocoop.CoCoOpCLIP(default_trainer_node(cocoop, "COCOOP", N_CTX=2), CLASSNAMES, model)
    assert cocoop_model.prompt_learner.ctx.dtype == torch.float32
    logits = cocoop_model(images)
    assert torch.isfinite(logits.float()).all()
    cocoop_model.training_loss(images, torch.tensor([0, 1, 2]))[0].backward()
    assert cocoop_model.prompt_learner.ctx.grad.dtype == torch.float32
