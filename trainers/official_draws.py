"""The random draws of each method's official build, replayed so that a run here follows the official run.

Between seeding and the first batch the official builds draw from torch's CPU generator for tensors this
project keeps (contexts, prompts, MaPLe's and CoCoOp's linear layers) and for tensors it never builds (a
CLIP's own random init before its weights are loaded, second CLIPs, KgCoOp's unused modules). What they
leave in the generator decides the first batch's order and crops, and every later one. A trainer
declares its official build as a list of steps (``PromptTrainer.official_draws``); after this project's
build, ``replay`` rewinds the generator to where the build started and runs the steps: kept tensors are
drawn anew into the model's own parameters, dead ones only advance the generator, without being built.

On the CPU an fp32 ``uniform_`` (and so kaiming, xavier and ``nn.Linear``'s bias init) takes one 32-bit
word per element, and a contiguous fp32 ``normal_`` / ``randn`` of n >= 16 elements takes n, plus 16 when n
is not a multiple of 16 (the last 16 are redrawn); a smaller ``normal_`` draws as it is (it may keep a
spare sample in the generator). Python's ``random`` and numpy's are untouched by every build.
"""
from dataclasses import dataclass

import torch
from torch import nn

SKIP_CHUNK = 1 << 20  # words advanced per call: the replay of a dead CLIP holds 4 MB, not the CLIP
PROMPT_STD = 0.02
SMALL_NORMAL = 16  # below this, torch draws normal samples one by one


def skip_words(count):
    """Advance torch's CPU generator by ``count`` 32-bit words, as ``count`` fp32 uniform samples do."""
    buffer = torch.empty(min(count, SKIP_CHUNK))
    while count > 0:
        buffer[: min(count, SKIP_CHUNK)].uniform_()
        count -= SKIP_CHUNK


@dataclass
class Uniform:
    """Dead uniform draws (conv/linear weights and biases, attention projections) of ``count`` elements."""

    count: int
    what: str

    def draw(self):
        skip_words(self.count)


@dataclass
class Normal:
    """A ``normal_(std)`` of ``shape``: copied into ``into`` (a parameter here), or dead."""

    shape: tuple
    what: str
    std: float = PROMPT_STD
    into: torch.Tensor = None

    def draw(self):
        numel = torch.Size(self.shape).numel()
        if self.into is None and numel >= SMALL_NORMAL:
            skip_words(numel + (SMALL_NORMAL if numel % SMALL_NORMAL else 0))
            return
        values = torch.empty(self.shape).normal_(std=self.std)
        if self.into is not None:
            with torch.no_grad():
                self.into.copy_(values)


@dataclass
class Linear:
    """``nn.Linear(in_features, out_features, bias)``'s init, loaded into each module of ``into`` (copies of
    one draw, as MaPLe clones its coupling layer); dead when ``into`` is empty."""

    in_features: int
    out_features: int
    what: str
    bias: bool = True
    into: tuple = ()

    def draw(self):
        if not self.into:
            skip_words(self.out_features * (self.in_features + self.bias))
            return
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias)
        for module in self.into:
            module.load_state_dict(layer.state_dict())


def replay(steps, start_state):
    """Rewind torch's CPU generator to ``start_state`` (taken before this project's build) and draw
    ``steps`` in order; ``None``: the method has no official build to follow, nothing happens."""
    if steps is None:
        return
    torch.set_rng_state(start_state)
    for step in steps:
        step.draw()


def module_init(module, what):
    """Draws of the default init of every conv, linear and attention layer in ``module`` (all uniform)."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            count += layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
        elif isinstance(layer, nn.MultiheadAttention):
            count += layer.in_proj_weight.numel()  # xavier; its out_proj is a Linear, counted above
    return [Uniform(count, what)]


def normal_like(tensor, what, keep=False):
    """A normal_ of ``tensor``'s shape: drawn into it (``keep``), or dead."""
    return Normal(tuple(tensor.shape), what, into=tensor if keep else None)


def transformer_init(transformer, tower, prompts):
    """Each block's layers, then (the MaPLe repository's modified CLIP) its ``VPT_shallow`` prompt."""
    steps = []
    for index, block in enumerate(transformer.resblocks):
        steps += module_init(block, f"{tower} block {index}")
        if prompts and hasattr(block, "VPT_shallow"):
            steps.append(normal_like(block.VPT_shallow, f"{tower} block {index} prompt", keep=True))
    return steps


def clip_construction(clip_model, prompts=False):
    """OpenAI's ``CLIP(...)`` for the architecture of ``clip_model``: each module's own init in construction
    order, then ``initialize_parameters``; its values are dead (the weights are loaded over them).

    ``prompts``: the official IVLP/VPT/PromptSRC build, whose modified CLIP draws the prompts this project
    attaches to ``clip_model`` inside its construction: the image input prompt ``VPT`` right after
    ``conv1``, each block's ``VPT_shallow`` right after that block's layers, image tower before text tower.
    """
    visual, text = clip_model.visual, clip_model.transformer
    steps = []
    if hasattr(visual, "transformer"):  # ViT
        steps += module_init(visual.conv1, "conv1")
        if prompts and hasattr(visual, "VPT"):
            steps.append(normal_like(visual.VPT, "image input prompt", keep=True))
        steps += [normal_like(visual.class_embedding, "class_embedding"),
                  normal_like(visual.positional_embedding, "image positional_embedding")]
        steps += transformer_init(visual.transformer, "image", prompts)
        steps.append(normal_like(visual.proj, "image proj"))
    else:  # ModifiedResNet: its convolutions and attention pool, all dead, so only their count matters
        steps += module_init(visual, "resnet")
        steps.append(normal_like(visual.attnpool.positional_embedding, "attnpool positional_embedding"))
    steps += transformer_init(text, "text", prompts)
    steps.append(normal_like(clip_model.token_embedding.weight, "token_embedding"))
    # initialize_parameters
    steps += [normal_like(clip_model.token_embedding.weight, "token_embedding init"),
              normal_like(clip_model.positional_embedding, "text positional_embedding init")]
    if not hasattr(visual, "transformer"):
        pool = visual.attnpool
        steps += [normal_like(layer.weight, "attnpool init")
                  for layer in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj)]
    for index, block in enumerate(text.resblocks):
        steps += [normal_like(tensor, f"text block {index} init") for tensor in (
            block.attn.in_proj_weight, block.attn.out_proj.weight, block.mlp.c_fc.weight, block.mlp.c_proj.weight)]
    steps.append(normal_like(clip_model.text_projection, "text_projection init"))
    return steps


def context(model):
    """CoOp's family: ``nn.init.normal_(ctx, std=0.02)`` unless the context comes from a phrase."""
    ctx = model.prompt_learner.ctx
    return [normal_like(ctx, "context", keep=True)] if model.random_context else []
