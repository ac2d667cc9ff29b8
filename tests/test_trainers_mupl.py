"""MuPL's model on a tiny random CLIP: shapes, equivalences with CoCoOp and the hand-written prompt,
what trains, what is saved, and the gradient paths its switches name."""
import pytest
import torch

from clip.tiny import tiny_state_dict
import clip
from dassl.config import get_cfg_default
from trainers import cocoop, mupl
from trainers.common import TemplateTextFeatures, cast_clip, freeze_all_but_prompt_learner

CLASSNAMES = ["abyssinian", "great_pyrenees", "pug", "sphynx", "beagle"]
BATCH = 3


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    return cast_clip(clip.build_model(tiny_state_dict(arch="vit", seed=0)), "fp32")


@pytest.fixture(scope="module")
def images():
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def mupl_cfg(**overrides):
    """TRAINER.MUPL with defaults, overridden by flat keys like ``TVP__TOPK=8``."""
    cfg = get_cfg_default()
    mupl.extend_cfg(cfg)
    cocoop.extend_cfg(cfg)
    node = cfg.TRAINER.MUPL
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        target = node
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return node


def build(clip_model, classnames=CLASSNAMES, **overrides):
    torch.manual_seed(0)
    model = mupl.MuPLCLIP(mupl_cfg(**overrides), classnames, clip_model)
    freeze_all_but_prompt_learner(model)
    return model


def test_every_intermediate_has_the_documented_shape(clip_model, images):
    model = build(clip_model, TVP__DEPTH=3)
    n_cls, n_ctx = len(CLASSNAMES), 4
    embed, ctx_dim, width = model.embed_dim, model.ctx_dim, clip_model.visual.width

    plain = model.encode_image(images)
    assert plain.shape == (BATCH, embed)
    meta = model.prompt_learner.meta_tokens(plain.float())
    assert meta.shape == (BATCH, n_ctx, ctx_dim)
    ctx = model.prompt_learner.context(plain)
    assert ctx.shape == (BATCH, n_ctx, ctx_dim)
    text = model.encode_instance_text(ctx)
    assert text.shape == (BATCH, n_cls, embed)
    assert torch.allclose(text.norm(dim=-1), torch.ones(BATCH, n_cls), atol=1e-5)
    reorganized = model.prompt_learner.visual_prompt.reorganize(plain, text)
    assert reorganized.shape == (BATCH, 4, embed)
    prompts, deep = model.prompt_learner.visual_prompt(plain, text)
    assert prompts.shape == (BATCH, 4, width)
    assert len(deep) == 2 and all(p.shape == (BATCH, 4, width) for p in deep)
    image_features, text_again = model.features(images)
    assert image_features.shape == (BATCH, embed)
    assert torch.equal(text_again, text)
    assert model(images).shape == (BATCH, n_cls)


@pytest.mark.parametrize("mode", ["shared", "independent", "cocoop"])
def test_ftp_modes_give_one_meta_token_per_context_slot(clip_model, images, mode):
    model = build(clip_model, FTP__MODE=mode, FTP__ZERO_INIT=False)
    meta = model.prompt_learner.meta_tokens(model.encode_image(images).float())
    assert meta.shape == (BATCH, 4, model.ctx_dim)
    tokens_differ = not torch.allclose(meta[:, 0], meta[:, 1])
    assert tokens_differ == (mode != "cocoop")


def test_cocoop_mode_without_tvp_gives_cocoop_logits(clip_model, images):
    cfg = get_cfg_default()
    cocoop.extend_cfg(cfg)
    cfg.TRAINER.COCOOP.N_CTX = 4
    cfg.TRAINER.COCOOP.CTX_INIT = "a photo of a"
    torch.manual_seed(3)
    reference = cocoop.CoCoOpCLIP(cfg.TRAINER.COCOOP, CLASSNAMES, clip_model)
    model = build(clip_model, FTP__MODE="cocoop", FTP__ZERO_INIT=False, TVP__ENABLED=False)
    with torch.no_grad():
        model.prompt_learner.ctx.copy_(reference.prompt_learner.ctx + 0.1)
        reference.prompt_learner.ctx.add_(0.1)
    model.prompt_learner.meta_tokens.nets[0].load_state_dict(reference.prompt_learner.meta_net.state_dict())
    with torch.no_grad():
        expected = reference(images)
        assert torch.allclose(model(images), expected, atol=1e-4)
    assert torch.allclose(model.prompt_learner.ctx, reference.prompt_learner.ctx)


def test_ftp_and_tvp_off_is_cocoop_even_with_another_ftp_mode(clip_model):
    model = build(clip_model, FTP__ENABLED=False, FTP__MODE="independent", TVP__ENABLED=False)
    assert model.prompt_learner.meta_tokens.mode == "cocoop"
    assert model.prompt_learner.visual_prompt is None
    assert model.prompt_learner.meta_tokens.nets[0].linear2.weight.abs().sum() > 0


def test_zeroed_last_layer_starts_at_the_hand_written_prompt(clip_model, images):
    model = build(clip_model)
    _, text = model.features(images)
    hand_written = TemplateTextFeatures(clip_model, "a photo of a {}.")(CLASSNAMES)
    for row in text:
        assert torch.allclose(row, hand_written, atol=1e-5)


def test_topk_is_clamped_to_the_number_of_classes(clip_model, images):
    model = build(clip_model, ["pug", "beagle"], TVP__TOPK=8)
    plain = model.encode_image(images)
    text = model.encode_instance_text(model.prompt_learner.context(plain))
    prompts, _ = model.prompt_learner.visual_prompt(plain, text)
    assert prompts.shape[1] == 2
    logits = model(images)
    assert logits.shape == (BATCH, 2) and torch.isfinite(logits).all()


def test_topk_keeps_the_best_scored_classes_with_softmax_weights():
    tvp = mupl.TextReorganizedVisualPrompt(embed_dim=3, vision_width=6, topk=2, temperature=1.0, depth=1)
    scores = torch.tensor([[3.0, 1.0, 2.0]])
    class_text = torch.eye(3)[None] * scores[..., None]
    picked = tvp.reorganize(torch.ones(1, 3), class_text)
    weights = torch.softmax(torch.tensor([3.0, 2.0]), dim=0)
    assert torch.allclose(picked[0, 0], weights[0] * class_text[0, 0])
    assert torch.allclose(picked[0, 1], weights[1] * class_text[0, 2])


def test_only_prompt_modules_get_gradients(clip_model, images):
    model = build(clip_model, FTP__ZERO_INIT=False, TVP__DEPTH=2, LOSS__CONTRASTIVE_WEIGHT=1.0)
    loss, logits = model.training_loss(images, torch.tensor([0, 1, 2]))
    loss.backward()
    got_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert got_grad
    assert all(name.startswith("prompt_learner.") for name in got_grad)
    learnable = {f"prompt_learner.{name}" for name, _ in model.prompt_learner.named_parameters()}
    assert got_grad == learnable
    model.zero_grad(set_to_none=True)


def test_checkpoint_holds_only_prompt_parameters_and_loads_on_new_classes(clip_model, images):
    trained = build(clip_model)
    state = trained.prompt_learner.state_dict()
    assert set(state) == {name for name, _ in trained.prompt_learner.named_parameters()}
    assert sum(v.numel() for v in state.values()) < sum(p.numel() for p in clip_model.parameters())
    new_classes = build(clip_model, ["bulldog", "persian", "ragdoll"])
    new_classes.prompt_learner.load_state_dict(state)
    assert new_classes(images).shape == (BATCH, 3)


def test_detach_text_cuts_the_image_branch_path_into_ftp(clip_model, images):
    for detach in (False, True):
        model = build(clip_model, FTP__ZERO_INIT=False, TVP__DETACH_TEXT=detach)
        plain = model.encode_image(images)
        text = model.encode_instance_text(model.prompt_learner.context(plain))
        prompts, _ = model.prompt_learner.visual_prompt(plain, model.tvp_text(text))
        prompts.square().sum().backward()
        ctx_grad = model.prompt_learner.ctx.grad
        assert (ctx_grad is None) == detach
        assert model.prompt_learner.visual_prompt.slots.grad is not None


def test_frozen_tvp_text_is_encoded_once_per_class_set(clip_model, images):
    model = build(clip_model, TVP__TEXT="frozen")
    first = model.frozen_text(CLASSNAMES)
    model(images)
    assert model.frozen_text(CLASSNAMES) is first
    assert model.frozen_text(["pug", "beagle"]).shape[0] == 2


def test_contrastive_term_adds_to_the_loss(clip_model, images):
    labels = torch.tensor([0, 1, 2])
    plain_loss, _ = build(clip_model).training_loss(images, labels)
    with_term, _ = build(clip_model, LOSS__CONTRASTIVE_WEIGHT=1.0).training_loss(images, labels)
    assert torch.isfinite(with_term) and with_term > plain_loss


def test_bad_settings_are_rejected(clip_model):
    with pytest.raises(ValueError):
        build(clip_model, FTP__MODE="per_token")
    with pytest.raises(ValueError):
        build(clip_model, TVP__TEXT="random")


def test_resnet_runs_ftp_only_and_refuses_tvp(images):
    resnet = cast_clip(clip.build_model(tiny_state_dict(arch="rn", seed=0)), "fp32")
    with pytest.raises(ValueError, match="ViT"):
        build(resnet)
    model = build(resnet, TVP__ENABLED=False)
    loss, logits = model.training_loss(images, torch.tensor([0, 1, 2]))
    loss.backward()
    assert logits.shape == (BATCH, len(CLASSNAMES))
    assert model.prompt_learner.meta_tokens.nets[0].linear1.weight.grad is not None
