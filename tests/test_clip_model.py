"""clip/ against an independent implementation (open_clip), and its prompt entry points."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import clip
from clip.model import CLIP, ResidualAttentionBlock, architecture_from_state_dict, build_model
from clip.prompting import ClassPrompts, TextEncoder
from clip.tiny import build_tiny_clip, save_tiny_clip, tiny_state_dict
from tools.bench import reference_text
from tests.helpers import assert_same_values_and_gradients

open_clip = pytest.importorskip("open_clip")

# Real shapes: layers trimmed to keep the CPU test fast, widths and patch sizes as released.
REAL_SHAPES = {
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, transformer_width=512, transformer_heads=8, transformer_layers=2),
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=2, vision_width=768,
                     vision_patch_size=32, transformer_width=512, transformer_heads=8, transformer_layers=2),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=2, vision_width=768,
                     vision_patch_size=16, transformer_width=512, transformer_heads=8, transformer_layers=2),
}
HARD_STRINGS = [
    "a photo of a cat.",
    "Crème brûlée à la française, naïve façade",
    "emoji 🐱🚀 and symbols ©®™ &amp; <html>",
    "don't   stop   WE'LL  go   it's     fine",
    "数字 123 4567 and mixed ǅ ﬁ ligatures",
]


def random_openai_state_dict(name, seed=0):
    """Random weights in OpenAI's layout, rounded through fp16 as the released files are."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(context_length=77, vocab_size=49408, **REAL_SHAPES[name])
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.data.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in build_model(model.state_dict()).float().state_dict().items()}


@pytest.mark.parametrize("name", list(REAL_SHAPES))
def test_features_match_open_clip_on_the_same_weights(name):
    state_dict = random_openai_state_dict(name)
    ours = build_model(state_dict).float().eval()
    theirs = open_clip.model.build_model_from_openai_state_dict(dict(state_dict)).float().eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    text = clip.tokenize(["a photo of a dog.", "a diagram"])
    with torch.no_grad():
        image_diff = F.normalize(ours.encode_image(image), dim=-1) - F.normalize(theirs.encode_image(image), dim=-1)
        text_diff = F.normalize(ours.encode_text(text), dim=-1) - F.normalize(theirs.encode_text(text), dim=-1)
    assert image_diff.abs().max() <= 1e-5
    assert text_diff.abs().max() <= 1e-5


def test_tokenizer_matches_open_clip():
    reference = open_clip.get_tokenizer("ViT-B-16")
    long_text = "a very long caption " * 40
    assert torch.equal(clip.tokenize(HARD_STRINGS), reference(HARD_STRINGS))
    assert torch.equal(clip.tokenize([long_text], truncate=True), reference([long_text]))
    with pytest.raises(RuntimeError, match="too long for context length 77"):
        clip.tokenize([long_text])


def test_build_model_infers_architecture_and_converts_to_fp16():
    state_dict = tiny_state_dict("vit")
    arch = architecture_from_state_dict(state_dict)
    assert (arch["vision_layers"], arch["vision_width"], arch["image_resolution"]) == (3, 64, 32)
    model = build_model(state_dict)
    assert model.visual.conv1.weight.dtype == torch.float16
    assert model.ln_final.weight.dtype == torch.float32
    assert not model.training
    rn = architecture_from_state_dict(tiny_state_dict("rn"))
    assert rn["vision_layers"] == (1, 1, 1, 1) and rn["image_resolution"] == 32


def test_truncated_batched_text_encoder_equals_the_77_token_loop():
    model = build_tiny_clip().float()
    names = ["cat", "golden_retriever", "a very long class name with many words in it"]
    prompts = ClassPrompts(model, names, n_ctx=4)
    encoder = TextEncoder(model, chunk_size=2)
    ctx = torch.randn(3, 4, 64)  # three images, one context each
    batched = encoder(prompts.assemble(ctx, batched=True), prompts.eot.expand(3, -1))
    loop = reference_text(model, (prompts.assemble(image_ctx) for image_ctx in ctx), prompts.eot)
    assert torch.allclose(batched, loop, atol=1e-5)
    assert batched.shape == (3, 3, 32)


@pytest.mark.parametrize("chunk_size", [2, 3, 64])
def test_shared_prefix_text_path_equals_the_77_token_loop_in_values_and_gradients(chunk_size):
    """Each image's [SOS] ctx runs once for all its classes; features and the gradient reaching ctx must be
    those of every prompt assembled and run whole. chunk_size 2 splits one image's classes across chunks,
    3 holds exactly one image, 64 all of them."""
    model = build_tiny_clip().float()
    names = ["cat", "golden_retriever", "a very long class name with many words in it"]
    prompts = ClassPrompts(model, names, n_ctx=4)
    encoder = TextEncoder(model, chunk_size=chunk_size)
    ctx = torch.randn(3, 4, 64, requires_grad=True)
    shared = encoder.encode_shared_prefix(prompts.shared_prefix(ctx), prompts.token_suffix, prompts.eot)
    loop = reference_text(model, (prompts.assemble(image_ctx) for image_ctx in ctx), prompts.eot)
    assert shared.shape == (3, 3, 32)
    assert_same_values_and_gradients(shared, loop, ctx)


def test_a_shared_prefix_gives_every_row_of_the_full_causal_sequences():
    torch.manual_seed(0)
    tower = build_tiny_clip().float().transformer
    prefix, suffix = torch.randn(2, 3, 64), torch.randn(2 * 4, 5, 64)  # 2 groups of 4 sequences
    whole = torch.cat([prefix.repeat_interleave(4, dim=0), suffix], dim=1)
    with torch.no_grad():
        full = tower.forward_batch_first(whole)
        assert torch.allclose(tower.forward_batch_first(suffix, prefix=prefix), full[:, 3:], atol=1e-5)
    with pytest.raises(ValueError, match="needs causal attention"):
        ResidualAttentionBlock(32, 4).forward_after_prefix(torch.randn(2, 3, 32), torch.randn(1, 2, 32))


@pytest.mark.parametrize("causal", [False, True])
def test_last_block_at_pooled_rows_equals_the_full_block_and_its_gradients(causal):
    """The readout computes one query and one MLP row per sequence in the last block; the values and the
    gradients reaching its input must be those of the full block read at the same rows."""
    torch.manual_seed(0)
    mask = CLIP.build_attention_mask(SimpleNamespace(context_length=9)) if causal else None
    block = ResidualAttentionBlock(32, 4, attn_mask=mask)
    x = torch.randn(5, 9, 32, requires_grad=True)
    rows = torch.tensor([0, 8, 3, 5, 1])
    full = block.forward_batch_first(x)[torch.arange(5), rows]
    assert_same_values_and_gradients(block.forward_rows(x, rows), full, x)


def test_class_prompts_start_from_ctx_init_and_read_like_the_sentence():
    model = build_tiny_clip().float()
    prompts = ClassPrompts(model, ["pug"], n_ctx=4, ctx_init="a photo of a")
    assembled = prompts.assemble(prompts.ctx_init_vectors())
    expected = model.token_embedding(clip.tokenize(["a photo of a pug."]))
    assert torch.equal(assembled, expected)
    assert prompts.name_lens.tolist() == [1]
    partial = ClassPrompts(model, ["pug"], n_ctx=2, ctx_init="a photo of a")  # IVLP, MaPLe: "of a" stays fixed
    assert torch.equal(partial.assemble(partial.ctx_init_vectors()), expected)
    assert partial.fixed_init_tokens == 2
    with pytest.raises(ValueError, match="has 4 tokens, fewer than the 5 context vectors"):
        ClassPrompts(model, ["pug"], n_ctx=5, ctx_init="a photo of a")


def test_visual_prompts_enter_before_ln_pre_and_deep_prompts_replace_them():
    model = build_tiny_clip().float()
    image = torch.randn(2, 3, 32, 32)
    plain = model.visual(image)
    assert torch.allclose(model.visual(image, prompts=torch.zeros(2, 0, 64)), plain, atol=1e-6)
    prompts = torch.randn(2, 4, 64)
    shallow = model.visual(image, prompts=prompts)
    assert not torch.allclose(shallow, plain)
    deep = model.visual(image, prompts=prompts, deep_prompts=[torch.randn(2, 4, 64)])
    assert not torch.allclose(deep, shallow)
    with pytest.raises(ValueError, match="at most 2 deep prompt layers"):
        model.visual(image, prompts=prompts, deep_prompts=[prompts] * 3)
    resnet = build_tiny_clip("rn").float()
    with pytest.raises(ValueError, match="need a ViT"):
        resnet.visual(image, prompts=prompts)


# --- OpenAI's tensor layout at every public module (code written for OpenAI's clip gets its numbers) ----

def openai_style_text_features(model, tokens):
    """The text encoder of CoOp-family code, as written against OpenAI's CLIP: permute to (L, N, D), call
    ``transformer``, permute back, read the EOT row."""
    x = model.token_embedding(tokens).type(model.dtype) + model.positional_embedding.type(model.dtype)
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x).type(model.dtype)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def openai_style_image_features(visual, image):
    """A ViT image encoder as VPT-style code writes it against OpenAI's modules, block by block."""
    x = visual.conv1(image.type(visual.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
    x = x.permute(1, 0, 2)
    for block in visual.transformer.resblocks:
        x = block(x)
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


def test_coop_family_encoders_written_for_openai_layout_equal_encode_text_and_image():
    model = build_model(random_openai_state_dict("ViT-B/16")).float()
    tokens = clip.tokenize(["a photo of a dog.", "a diagram", "a photo of a great pyrenees, a type of pet."])
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(openai_style_text_features(model, tokens), model.encode_text(tokens), atol=1e-5)
        assert torch.allclose(openai_style_image_features(model.visual, image), model.encode_image(image), atol=1e-5)


def test_block_attention_is_openais_multihead_attention_with_its_mask():
    """``attention`` and ``forward`` take (L, N, W); ``attn_mask`` is OpenAI's and means what it says."""
    torch.manual_seed(0)
    tower = build_tiny_clip().float().transformer
    block = tower.resblocks[0]
    x = torch.randn(7, 3, 64)  # L, N, W
    expected = block.attn(x, x, x, need_weights=False, attn_mask=block.attn_mask[:7, :7])[0]
    assert torch.allclose(block.attention(x), expected, atol=1e-5)
    block.attn_mask = None  # as in OpenAI's ViT blocks: every position sees every other
    assert torch.allclose(block.attention(x), block.attn(x, x, x, need_weights=False)[0], atol=1e-5)
    with pytest.raises(ValueError, match="must be None or the causal"):
        block.attn_mask = torch.zeros(77, 77)
    with pytest.raises(ValueError, match="must be None or the causal"):
        ResidualAttentionBlock(64, 1, attn_mask=torch.ones(5, 5, dtype=torch.bool).tril())


def test_attention_pool_matches_open_clip_on_the_same_weights():
    from open_clip.modified_resnet import AttentionPool2d as TheirPool

    from clip.model import AttentionPool2d

    torch.manual_seed(0)
    ours = AttentionPool2d(7, 64, 4, 32)
    theirs = TheirPool(7, 64, 4, 32)
    theirs.load_state_dict(ours.state_dict())
    feature_map = torch.randn(2, 64, 7, 7)  # N, C, H, W as OpenAI's ModifiedResNet hands it over
    with torch.no_grad():
        assert torch.allclose(ours(feature_map), theirs(feature_map), atol=1e-5)


def test_deep_text_prompts_replace_the_context_after_sos_at_each_layer_on_every_text_path():
    """Deep language prompting (IVLP, MaPLe, PromptSRC): at the input of layer i the positions 1..n hold the
    layer's own prompts. Reference written from that rule over OpenAI-layout blocks; the truncated batched
    path and the shared-prefix path must give its features and gradients."""
    torch.manual_seed(0)
    model = build_tiny_clip().float()
    names = ["cat", "golden_retriever", "a very long class name with many words in it"]
    prompts = ClassPrompts(model, names, n_ctx=2, ctx_init="a photo")
    ctx = prompts.ctx_init_vectors().clone().requires_grad_(True)
    deep = [torch.randn(2, 64, requires_grad=True)]  # layer 1 of the 2-layer tiny text tower
    x = prompts.assemble(ctx) + model.positional_embedding
    x = x.permute(1, 0, 2)
    for index, block in enumerate(model.transformer.resblocks):
        if index == 1:
            x = torch.cat([x[:1], deep[0][:, None].expand(-1, x.shape[1], -1), x[3:]])
        x = block(x)
    x = model.ln_final(x.permute(1, 0, 2))
    reference = x[torch.arange(3), prompts.eot] @ model.text_projection
    encoder = TextEncoder(model, chunk_size=2)
    batched = encoder(prompts.assemble(ctx), prompts.eot, deep_prompts=deep)
    shared = encoder.encode_shared_prefix(prompts.shared_prefix(ctx[None]), prompts.token_suffix, prompts.eot,
                                          deep_prompts=deep)[0]
    for fast in (batched, shared):
        assert_same_values_and_gradients(fast, reference, (ctx, deep[0]))


def test_loading_weights_draws_only_what_building_clip_draws(tmp_path):
    """Runs seed torch before CLIP is loaded, and the first batch depends on what the build leaves in the
    generator: the weights check (which builds a tiny twin to name the keys a file lacks) must draw nothing
    beyond the CLIP construction itself, as OpenAI's ``clip.load`` draws."""
    path = tmp_path / "tiny.pt"
    save_tiny_clip(str(path))
    state_dict = torch.load(path, weights_only=True)
    torch.manual_seed(7)
    build_model(state_dict)
    expected = torch.get_rng_state()
    torch.manual_seed(7)
    clip.load_clip_model(str(path))
    assert torch.equal(torch.get_rng_state(), expected)
