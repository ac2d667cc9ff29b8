"""IVLP, VPT, MaPLe and PromptSRC against computations written here from their formulas, on OpenAI-layout
modules and CLIP's full 77-token prompts: logits, every loss term and the gradients of every prompt."""
import math

import pytest
import torch
import torch.nn.functional as F

import clip
from clip.tiny import build_tiny_clip
from tests.helpers import assert_same_values_and_gradients
from trainers import ivlp, maple, promptsrc, vpt
from trainers.common import BackboneMismatch, cast_clip, default_trainer_node, freeze_all_but_prompt_learner
from trainers.deep_prompts import deep_prompts
from trainers.prompt_averaging import GaussianPromptAverage, gaussian_epoch_weights
from trainers.templates import PROMPTSRC_TEMPLATES

NAMES = ["golden retriever", "cat", "a very long class name with many words in it"]
LABELS = torch.tensor([0, 2])


def image_batch():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# --- the reference: CLIP's towers block by block, prompts put where the papers put them ----------------

def reference_text(clip_model, ctx, class_prompts, deep, n_ctx):
    """[SOS] ctx suffix over all 77 positions (C, 77, D); at the input of layer i >= 1 positions 1..n hold
    ``deep[i-1]``; the feature is read at EOT."""
    prompts = class_prompts.assemble(ctx)
    x = (prompts + clip_model.positional_embedding).permute(1, 0, 2)
    for index, block in enumerate(clip_model.transformer.resblocks):
        if 1 <= index <= len(deep):
            x = torch.cat([x[:1], deep[index - 1][:, None].expand(-1, x.shape[1], -1), x[1 + n_ctx:]])
        x = block(x)
    x = clip_model.ln_final(x.permute(1, 0, 2))
    return F.normalize(x[torch.arange(x.shape[0]), class_prompts.eot] @ clip_model.text_projection, dim=-1)


def reference_image(visual, image, prompts=None, deep=()):
    """CLS, patches, then the prompts (before ln_pre); at layer i >= 1 the last n tokens are ``deep[i-1]``."""
    x = visual.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    if prompts is not None:
        x = torch.cat([x, prompts.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)
    for index, block in enumerate(visual.transformer.resblocks):
        if 1 <= index <= len(deep):
            x = torch.cat([x[: -deep[index - 1].shape[0]], deep[index - 1][:, None].expand(-1, x.shape[1], -1)])
        x = block(x)
    return F.normalize(visual.ln_post(x[0]) @ visual.proj, dim=-1)


def build(module, node_name, model_class, clip_layers=None, **values):
    clip_model = build_tiny_clip(**({"transformer_layers": clip_layers} if clip_layers else {})).float()
    model = model_class(default_trainer_node(module, node_name, **values), NAMES, clip_model)
    freeze_all_but_prompt_learner(model)
    return model, clip_model


def trained(model):
    return [param for param in model.parameters() if param.requires_grad]


# --- IVLP -------------------------------------------------------------------------------------------

def test_ivlp_logits_and_gradients_equal_the_77_token_reference_with_prompts_in_both_towers():
    model, clip_model = build(ivlp, "IVLP", ivlp.IndependentPromptsCLIP, N_CTX_TEXT=2, N_CTX_VISION=3,
                              PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=3)
    text_deep = deep_prompts(clip_model.transformer)
    image_deep = deep_prompts(clip_model.visual.transformer)
    assert [p.shape for p in text_deep] == [(2, 64)] and [p.shape for p in image_deep] == [(3, 64), (3, 64)]
    # the context starts as the first 2 tokens of "a photo of a"; "of a" stays in the fixed suffix
    start = clip_model.token_embedding(clip.tokenize("a photo of a"))[0, 1:3]
    assert torch.equal(model.prompt_learner.ctx, start)
    image = image_batch()
    text = reference_text(clip_model, model.prompt_learner.ctx, model.class_prompts, text_deep, 2)
    image_features = reference_image(clip_model.visual, image, clip_model.visual.VPT, image_deep)
    expected = clip_model.logit_scale.exp() * image_features @ text.t()
    assert_same_values_and_gradients(model(image), expected, trained(model), atol=1e-4)
    loss, _ = model.training_loss(image, LABELS)
    assert torch.allclose(loss, F.cross_entropy(expected, LABELS), atol=1e-5)


def test_ivlp_names_what_it_trains_as_the_official_checkpoints_do():
    model, _ = build(ivlp, "IVLP", ivlp.IndependentPromptsCLIP, PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=2)
    assert sorted(model.state_dict()) == [
        "image_encoder.VPT", "image_encoder.transformer.resblocks.1.VPT_shallow", "prompt_learner.ctx",
        "text_encoder.transformer.resblocks.1.VPT_shallow"]
    with pytest.raises(BackboneMismatch, match="TRAINER.IVLP.PROMPT_DEPTH_VISION is 9, but this backbone's tower has 3"):
        build(ivlp, "IVLP", ivlp.IndependentPromptsCLIP, PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=9)


def test_prompt_methods_refuse_a_resnet_with_one_message():
    resnet = build_tiny_clip("rn").float()
    for module, node_name, model_class in ((ivlp, "IVLP", ivlp.IndependentPromptsCLIP),
                                           (vpt, "VPT", vpt.VisualPromptCLIP), (maple, "MAPLE", maple.MaPLeCLIP)):
        with pytest.raises(BackboneMismatch, match="needs a ViT backbone"):
            model_class(default_trainer_node(module, node_name), NAMES, resnet)


# --- VPT --------------------------------------------------------------------------------------------

def test_vpt_classifies_with_a_photo_of_a_features_and_learns_only_image_prompts():
    model, clip_model = build(vpt, "VPT", vpt.VisualPromptCLIP, N_CTX_VISION=4, PROMPT_DEPTH_VISION=3)
    assert sorted(model.state_dict()) == ["image_encoder.VPT", "image_encoder.transformer.resblocks.1.VPT_shallow",
                                          "image_encoder.transformer.resblocks.2.VPT_shallow"]
    with torch.no_grad():
        classifier = F.normalize(clip_model.encode_text(clip.tokenize([f"a photo of a {n}." for n in NAMES])), dim=-1)
    image = image_batch()
    image_features = reference_image(clip_model.visual, image, clip_model.visual.VPT,
                                     deep_prompts(clip_model.visual.transformer))
    expected = clip_model.logit_scale.exp() * image_features @ classifier.t()
    assert_same_values_and_gradients(model(image), expected, trained(model), atol=1e-4)


# --- MaPLe ------------------------------------------------------------------------------------------

def test_maple_projections_start_as_copies_of_one_layer():
    model, _ = build(maple, "MAPLE", maple.MaPLeCLIP, clip_layers=3, PROMPT_DEPTH=3)
    first, second = model.prompt_learner.compound_prompt_projections
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first.weight.data_ptr() != second.weight.data_ptr()  # copies, trained apart


def test_maple_couples_image_prompts_to_text_prompts_at_the_right_layers():
    model, clip_model = build(maple, "MAPLE", maple.MaPLeCLIP, clip_layers=3, N_CTX=2, PROMPT_DEPTH=3)
    learner = model.prompt_learner
    with torch.no_grad():  # the two projections get their own values, to tell the layers apart
        learner.compound_prompt_projections[1].weight.mul_(-1.5)
    text_deep = list(learner.compound_prompts_text)
    image_prompts = learner.proj(learner.ctx)  # (2, 64): the coupling function of the input layer
    image_deep = [project(text) for project, text in zip(learner.compound_prompt_projections, text_deep)]
    image = image_batch()
    text = reference_text(clip_model, learner.ctx, model.class_prompts, text_deep, 2)
    image_features = reference_image(clip_model.visual, image, image_prompts, image_deep)
    expected = clip_model.logit_scale.exp() * image_features @ text.t()
    assert_same_values_and_gradients(model(image), expected, trained(model), atol=1e-4)


# --- PromptSRC --------------------------------------------------------------------------------------

def test_promptsrc_loss_terms_equal_their_formulas():
    model, clip_model = build(promptsrc, "PROMPTSRC", promptsrc.PromptSRCCLIP, PROMPT_DEPTH_TEXT=2,
                              PROMPT_DEPTH_VISION=3, TEXT_LOSS_WEIGHT=25, IMAGE_LOSS_WEIGHT=10)
    image = image_batch()
    terms, logits = model.training_loss(image, LABELS)
    scale = clip_model.logit_scale.exp()
    with torch.no_grad():
        per_template = [clip_model.encode_text(clip.tokenize([t.format(n) for n in NAMES])) for t in PROMPTSRC_TEMPLATES]
        fixed = F.normalize(torch.stack(per_template).mean(0), dim=-1)  # mean of unnormalised features
        plain_image = F.normalize(clip_model.encode_image(image), dim=-1)
    text = reference_text(clip_model, model.prompt_learner.ctx, model.class_prompts,
                          deep_prompts(clip_model.transformer), 4)
    image_features = reference_image(clip_model.visual, image, clip_model.visual.VPT,
                                     deep_prompts(clip_model.visual.transformer))
    expected_logits = scale * image_features @ text.t()
    zero_shot = (scale * plain_image @ fixed.t()).softmax(-1)
    expected = {
        "loss_ce": F.cross_entropy(expected_logits, LABELS),
        "loss_text": 25 * (text - fixed).abs().mean(),
        "loss_image": 10 * (image_features - plain_image).abs().mean(),
        "loss_kl": (zero_shot * (zero_shot.log() - expected_logits.log_softmax(-1))).sum() / expected_logits.numel(),
    }
    assert terms.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(terms[name], value, atol=1e-5), name
    params = trained(model)
    got = torch.autograd.grad(sum(terms.values()), params)
    want = torch.autograd.grad(sum(expected.values()), params)
    for g, w in zip(got, want):
        assert w.abs().max() > 0 and torch.allclose(g, w, atol=1e-4)
    assert torch.allclose(logits, expected_logits, atol=1e-4)


def test_gaussian_prompt_average_weights_and_aggregate():
    weights = gaussian_epoch_weights(20, 15, 1)
    density = [math.exp(-((e - 15) ** 2) / 2) for e in range(1, 21)]
    assert weights == pytest.approx([d / sum(density) for d in density], rel=1e-12)
    assert weights[14] == pytest.approx(0.399, abs=1e-3) and weights[11] == pytest.approx(0.0044, abs=1e-4)
    states = [{"p": torch.randn(3, 4, dtype=torch.float64)} for _ in range(4)]
    average = GaussianPromptAverage(4, 2.5, 1.0)
    results = [average.add(epoch, state) for epoch, state in enumerate(states)]
    assert results[:3] == [None, None, None]
    expected = sum(w * s["p"] for w, s in zip(gaussian_epoch_weights(4, 2.5, 1.0), states))
    assert torch.allclose(results[3]["p"], expected, atol=1e-12)


@pytest.mark.parametrize("prec", ["bf16", "amp"])
def test_every_method_runs_in_other_precisions_on_the_cpu(prec):
    from trainers.common import autocast_context

    for module, node_name, model_class, depth in (
            (ivlp, "IVLP", ivlp.IndependentPromptsCLIP, dict(PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=2)),
            (vpt, "VPT", vpt.VisualPromptCLIP, dict(PROMPT_DEPTH_VISION=2)),
            (maple, "MAPLE", maple.MaPLeCLIP, dict(PROMPT_DEPTH=2)),
            (promptsrc, "PROMPTSRC", promptsrc.PromptSRCCLIP, dict(PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=2))):
        clip_model = cast_clip(build_tiny_clip(), prec)
        model = model_class(default_trainer_node(module, node_name, **depth), NAMES, clip_model)
        freeze_all_but_prompt_learner(model)
        with autocast_context(prec, torch.device("cpu")):
            loss, logits = model.training_loss(image_batch(), LABELS)
        total = sum(loss.values()) if isinstance(loss, dict) else loss
        total.backward()
        assert torch.isfinite(logits.float()).all() and all(p.grad is not None for p in trained(model))
