"""A seed gives each method's official run: after the trainer's build, torch's CPU generator, Python's
``random`` and numpy's are where the official build leaves them, the kept random tensors hold the official
values, and so the first batch (its images, their crops and flips) is the official one.

The official code cannot run here. Each reference below writes an official build's order with plain torch
calls, read from the official source (the file and class are named at each step); it constructs the modules
for real, so it also checks the draw counts that ``trainers/official_draws.py`` replays without building.
The tiny CLIP stands in for ViT-B/16: the order carries over, the counts follow the architecture.
"""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import plugins
import train
from clip.tiny import TINY_ARCHS, save_tiny_clip
from dassl.data import DataManager
from dassl.engine import TRAINER_REGISTRY, build_trainer
from dassl.utils import set_random_seed
from tests.helpers import make_pets_world
from trainers.common import check_init_phrase, init_phrase_or_none
from trainers.official_draws import Linear, Normal, Uniform

REPO = Path(__file__).resolve().parents[1]
ARCH = TINY_ARCHS["vit"]
WIDTH, TEXT_WIDTH, EMBED = ARCH["vision_width"], ARCH["transformer_width"], ARCH["embed_dim"]
PATCH = ARCH["vision_patch_size"]


def block(width):
    """OpenAI's ResidualAttentionBlock.__init__: attn, ln_1, mlp (c_fc, c_proj), ln_2 (the norms draw nothing)."""
    nn.MultiheadAttention(width, 1)
    nn.Linear(width, 4 * width)
    nn.Linear(4 * width, width)


def prompt(n_tokens, width):
    """The official prompts and contexts: ``torch.empty(n, width)`` then ``nn.init.normal_(std=0.02)``."""
    return nn.init.normal_(torch.empty(n_tokens, width), std=0.02)


def official_clip(vision=(0, 0), text=(0, 0)):
    """openai/CLIP clip/model.py ``CLIP.__init__`` then ``initialize_parameters``. With ``vision`` / ``text`` =
    (depth, n_tokens), the MaPLe repository's clip/model.py as IVLP/VPT/PromptSRC build it: VisionTransformer
    draws ``VPT`` right after conv1, ResidualAttentionBlock_IVLP its ``VPT_shallow`` after its own layers for
    blocks 1 .. depth - 1. Returns those prompts under this project's parameter names."""
    kept = {}
    nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)  # VisionTransformer.conv1
    if vision[0]:
        kept["image_encoder.VPT"] = prompt(vision[1], WIDTH)
    torch.randn(WIDTH)  # class_embedding
    torch.randn((ARCH["image_resolution"] // PATCH) ** 2 + 1, WIDTH)  # positional_embedding
    for index in range(ARCH["vision_layers"]):
        block(WIDTH)
        if 0 < index < vision[0]:
            kept[f"image_encoder.transformer.resblocks.{index}.VPT_shallow"] = prompt(vision[1], WIDTH)
    torch.randn(WIDTH, EMBED)  # VisionTransformer.proj
    for index in range(ARCH["transformer_layers"]):  # CLIP.transformer (text)
        block(TEXT_WIDTH)
        if 0 < index < text[0]:
            kept[f"text_encoder.transformer.resblocks.{index}.VPT_shallow"] = prompt(text[1], TEXT_WIDTH)
    embedding = nn.Embedding(ARCH["vocab_size"], TEXT_WIDTH)  # token_embedding; positional_embedding is empty
    nn.init.normal_(embedding.weight, std=0.02)  # initialize_parameters from here
    nn.init.normal_(torch.empty(ARCH["context_length"], TEXT_WIDTH), std=0.01)
    for _ in range(ARCH["transformer_layers"]):
        for shape in ((3 * TEXT_WIDTH, TEXT_WIDTH), (TEXT_WIDTH, TEXT_WIDTH), (4 * TEXT_WIDTH, TEXT_WIDTH),
                      (TEXT_WIDTH, 4 * TEXT_WIDTH)):  # in_proj, out_proj, c_fc, c_proj weights
            nn.init.normal_(torch.empty(shape))
    nn.init.normal_(torch.empty(TEXT_WIDTH, EMBED))  # text_projection
    return kept


def official_resnet_clip():
    """openai/CLIP clip/model.py ``CLIP.__init__`` with a ModifiedResNet (the tiny "rn" CLIP), then
    ``initialize_parameters``, which also draws the attention pool's projections (bn3 zeros draw nothing)."""
    arch = TINY_ARCHS["rn"]
    width, text_width, embed = arch["vision_width"], arch["transformer_width"], arch["embed_dim"]
    nn.Conv2d(3, width // 2, 3, bias=False), nn.Conv2d(width // 2, width // 2, 3, bias=False)  # the stem
    nn.Conv2d(width // 2, width, 3, bias=False)
    inplanes = width
    for planes in (width, 2 * width, 4 * width, 8 * width):  # layer1..4, one Bottleneck each
        nn.Conv2d(inplanes, planes, 1, bias=False), nn.Conv2d(planes, planes, 3, bias=False)
        nn.Conv2d(planes, 4 * planes, 1, bias=False)
        nn.Conv2d(inplanes, 4 * planes, 1, bias=False)  # downsample (stride 2, or a new width)
        inplanes = 4 * planes
    pool_width = 32 * width  # AttentionPool2d: positional_embedding, k, q, v, c projections
    torch.randn((arch["image_resolution"] // 32) ** 2 + 1, pool_width)
    pool = [nn.Linear(pool_width, pool_width) for _ in range(3)] + [nn.Linear(pool_width, embed)]
    for _ in range(arch["transformer_layers"]):
        block(text_width)
    embedding = nn.Embedding(arch["vocab_size"], text_width)
    nn.init.normal_(embedding.weight, std=0.02)  # initialize_parameters from here
    nn.init.normal_(torch.empty(arch["context_length"], text_width), std=0.01)
    for layer in pool:
        nn.init.normal_(layer.weight)
    for _ in range(arch["transformer_layers"]):
        for shape in ((3 * text_width, text_width), (text_width, text_width), (4 * text_width, text_width),
                      (text_width, 4 * text_width)):
            nn.init.normal_(torch.empty(shape))
    nn.init.normal_(torch.empty(text_width, embed))


def official_coop_resnet():
    """CoOp trainers/coop.py on a ResNet CLIP (its RN50 recipes), with a random context."""
    official_resnet_clip()
    return {"prompt_learner.ctx": prompt(16, TINY_ARCHS["rn"]["transformer_width"])}


def official_coop():
    """CoOp trainers/coop.py: load_clip_to_cpu, then PromptLearner's random context (N_CTX 16, CTX_INIT "")."""
    official_clip()
    return {"prompt_learner.ctx": prompt(16, TEXT_WIDTH)}


def official_cocoop():
    """CoOp trainers/cocoop.py: the CLIP; CTX_INIT "a photo of a" draws nothing; then PromptLearner.meta_net
    Linear(vis_dim, vis_dim // 16), ReLU, Linear(vis_dim // 16, ctx_dim)."""
    official_clip()
    linear1, linear2 = nn.Linear(EMBED, EMBED // 16), nn.Linear(EMBED // 16, TEXT_WIDTH)
    return {"prompt_learner.meta_net.linear1.weight": linear1.weight,
            "prompt_learner.meta_net.linear2.bias": linear2.bias}


def official_kgcoop():
    """htyao89/KgCoOp trainers/kgcoop.py with CTX_INIT "": the CLIP; PromptLearner: the context,
    ``bias_vectors`` normal_(1 x 512), a second load_clip_to_cpu, ``meta_net`` Linear(512, 512); CustomCLIP:
    Adapter(512, 4) = Linear(512, 128), Linear(128, 512), both without bias. 512 is hard-coded there."""
    official_clip()
    ctx = prompt(4, TEXT_WIDTH)
    prompt(1, 512)
    official_clip()
    nn.Linear(512, 512)
    nn.Linear(512, 128, bias=False)
    nn.Linear(128, 512, bias=False)
    return {"prompt_learner.ctx": ctx}


def official_prograd():
    """BeierZhu/Prompt-align trainers/prograd.py with CTX_INIT "": the CLIP, then the zero-shot teacher's
    ``CLIP(cfg, classnames)`` (a second load_clip_to_cpu), then CustomCLIP's random context (N_CTX 16)."""
    official_clip()
    official_clip()
    return {"prompt_learner.ctx": prompt(16, TEXT_WIDTH)}


def official_ivlp():
    """MaPLe repository trainers/independentVL.py, depths 3 (image) and 2 (text), 2 + 2 tokens, CTX_INIT "":
    the modified CLIP with its prompts, then VLPromptLearner's random context."""
    kept = official_clip(vision=(3, 2), text=(2, 2))
    kept["prompt_learner.ctx"] = prompt(2, TEXT_WIDTH)
    return kept


def official_vpt():
    """MaPLe repository trainers/vpt.py: the modified CLIP with image prompts only (depth 3, 8 tokens)."""
    return official_clip(vision=(3, 8))


def official_maple():
    """MaPLe repository trainers/maple.py, depth 2, CTX_INIT "a photo of a" (no draw): a plain CLIP, then in
    MultiModalPromptLearner ``proj`` Linear(ctx_dim, 768), the deep text prompts (n_ctx, 512) each
    normal_(std=0.02), one Linear(ctx_dim, 768) cloned into compound_prompt_projections. 768 and 512 are
    ViT-B's widths, written as the tiny CLIP's (the official code runs only where they agree)."""
    official_clip()
    proj = nn.Linear(TEXT_WIDTH, WIDTH)
    deep = prompt(2, TEXT_WIDTH)
    coupling = nn.Linear(TEXT_WIDTH, WIDTH)
    return {"prompt_learner.proj.weight": proj.weight, "prompt_learner.compound_prompts_text.0": deep,
            "prompt_learner.compound_prompt_projections.0.bias": coupling.bias}


def official_promptsrc():
    """muzairkhattak/PromptSRC trainers/promptsrc.py, depths 3 and 2, 4 + 4 tokens, CTX_INIT "a photo of a"
    (no draw): IVLP's modified CLIP, then in VLPromptLearner two load_clip_to_cpu(cfg, True) (depth 0: plain)."""
    kept = official_clip(vision=(3, 4), text=(2, 4))
    official_clip()
    official_clip()
    return kept


CASES = {  # trainer: (config node, options, official build)
    "CoOp": ("COOP", ["CTX_INIT", ""], official_coop),
    "CoOp-rn": ("COOP", ["CTX_INIT", ""], official_coop_resnet),
    "CoCoOp": ("COCOOP", [], official_cocoop),
    "KgCoOp": ("COOP", ["CTX_INIT", ""], official_kgcoop),
    "ProGrad": ("COOP", ["CTX_INIT", ""], official_prograd),
    "IVLP": ("IVLP", ["CTX_INIT", "", "PROMPT_DEPTH_TEXT", 2, "PROMPT_DEPTH_VISION", 3], official_ivlp),
    "VPT": ("VPT", ["PROMPT_DEPTH_VISION", 3], official_vpt),
    "MaPLe": ("MAPLE", ["PROMPT_DEPTH", 2], official_maple),
    "PromptSRC": ("PROMPTSRC", ["PROMPT_DEPTH_TEXT", 2, "PROMPT_DEPTH_VISION", 3], official_promptsrc),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The fake Pets tree with its few-shot split already written, so that both sides below load it (the
    first run of a seed draws it with Python's ``random``, official and here alike)."""
    world = make_pets_world(tmp_path_factory.mktemp("official_draws"))
    DataManager(make_cfg(world, "CoOp"))
    return world


def make_cfg(world, case):
    root, tiny = world
    node, options, _ = CASES[case]
    trainer, _, arch = case.partition("-")
    if arch:
        tiny = save_tiny_clip(root / f"{arch}.pt", arch=arch)
    recipe = (REPO / "configs/trainers" / trainer / "default_cfg.txt").read_text().strip()
    opts = [f"TRAINER.{node}.PREC", "fp32"]
    for key, value in zip(options[::2], options[1::2]):
        opts += [f"TRAINER.{node}.{key}", value]
    argv = ["--root", root / "data", "--seed", 1, "--trainer", trainer, "--output-dir", root / "out",
            "--dataset-config-file", REPO / "configs/datasets/oxford_pets.yaml",
            "--config-file", REPO / "configs/trainers" / trainer / f"{recipe}.yaml",
            "MODEL.BACKBONE.NAME", tiny, "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", 0,
            "DATASET.NUM_SHOTS", 2, "DATASET.SUBSAMPLE_CLASSES", "base", "DATALOADER.TRAIN_X.BATCH_SIZE", 2, *opts]
    return train.setup_cfg(train.build_parser().parse_args([str(a) for a in argv]), plugins.import_plugins())


def states_and_first_batch(loader):
    """The three generators' states after the build, and the first batch the loader then gives."""
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    return states, next(iter(loader))


@pytest.mark.parametrize("case", list(CASES))
def test_a_seed_leaves_the_random_state_and_first_batch_of_the_official_build(world, case):
    cfg = make_cfg(world, case)
    set_random_seed(cfg.SEED)
    built = build_trainer(cfg)
    states, batch = states_and_first_batch(built.train_loader_x)

    set_random_seed(cfg.SEED)  # the official run: Dassl's TrainerX builds the data, then the model
    data = DataManager(cfg)
    kept = CASES[case][2]()
    expected_states, expected_batch = states_and_first_batch(data.train_loader_x)

    assert torch.equal(states[0], expected_states[0])
    assert states[1] == expected_states[1]
    assert all(np.array_equal(a, b) for a, b in zip(states[2], expected_states[2]))
    assert batch["impath"] == expected_batch["impath"]
    assert torch.equal(batch["img"], expected_batch["img"])  # the same crops and flips of the same images
    parameters = dict(built.model.named_parameters())
    for name, value in kept.items():
        assert torch.equal(parameters[name], value), name


def test_the_replayed_draw_counts_equal_the_real_draws():
    """torch's CPU generator: an fp32 normal_ of n >= 16 takes n words, plus 16 when 16 does not divide n;
    a smaller one draws itself (a spare sample stays in the generator); uniform_ one word each."""
    for shape in [(1, 512), (17,), (3, 5), (1,), (64, 64)]:
        for real, replayed in [(lambda: torch.empty(shape).normal_(), Normal(shape, "dead")),
                               (lambda: torch.empty(shape).uniform_(), Uniform(torch.Size(shape).numel(), "dead"))]:
            torch.manual_seed(0)
            real()
            expected = torch.get_rng_state()
            torch.manual_seed(0)
            replayed.draw()
            assert torch.equal(torch.get_rng_state(), expected), (shape, replayed)
    torch.manual_seed(0)
    nn.Linear(20, 30, bias=False)
    expected = torch.get_rng_state()
    torch.manual_seed(0)
    Linear(20, 30, "dead", bias=False).draw()
    assert torch.equal(torch.get_rng_state(), expected)


@pytest.mark.parametrize("n_ctx, phrase", [(2, "a photo of a"), (4, "a photo of a"), (5, "")])
def test_ctx_init_is_used_only_where_the_official_code_uses_it(n_ctx, phrase):
    """The official IVLP, MaPLe and PromptSRC take CTX_INIT only when n_ctx <= 4 (else a random context)."""
    assert init_phrase_or_none("a photo of a", n_ctx, "TRAINER.IVLP.N_CTX_TEXT") == phrase


@pytest.mark.parametrize("trainer, node, key", [("IVLP", "IVLP", "N_CTX_TEXT"), ("MaPLe", "MAPLE", "N_CTX"),
                                                ("PromptSRC", "PROMPTSRC", "N_CTX_TEXT")])
def test_a_ctx_init_shorter_than_the_context_is_refused_before_anything(world, trainer, node, key):
    """Where the official code would start context slots from the end-of-text and padding embeddings."""
    cfg = make_cfg(world, trainer)
    cfg.defrost()
    cfg.TRAINER[node].CTX_INIT = "a photo"
    cfg.TRAINER[node][key] = 3
    with pytest.raises(ValueError, match=f'TRAINER.{node}.{key} is 3 but CTX_INIT "a photo" has 2 tokens.*'
                                         "end-of-text/padding"):
        TRAINER_REGISTRY.get(trainer).validate_cfg(cfg)
    check_init_phrase("a photo", 2, "key")  # as many tokens as slots: taken
