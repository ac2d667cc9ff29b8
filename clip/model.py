"""CLIP's image and text towers, with OpenAI's parameter names so official weights load strictly.

Every module code written against OpenAI's ``clip`` calls keeps OpenAI's tensor layout: ``Transformer``
and ``ResidualAttentionBlock`` take sequence-first (L, N, W) tensors, so a CoOp-style text encoder
(permute, call ``transformer``, permute back) gets OpenAI's numbers. The project's own paths run
batch-first around ``scaled_dot_product_attention`` through the ``*_batch_first`` / ``forward_rows`` /
``forward_after_prefix`` methods. Prompts enter in one place: the image encoder takes visual prompt tokens
(appended after the positional embedding, before ``ln_pre``), and both towers take deep prompts that
replace the prompt positions at the input of layers 1 .. J-1 (``Transformer.forward_batch_first``).
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """Computed in fp32 whatever the input dtype, as OpenAI's CLIP does for fp16 weights."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def causal_mask(query_rows, length, n_prefix=0):
    """Which keys each query may see: all ``n_prefix`` shared prefix positions, then rows 0..r of its own
    ``length``. ``query_rows`` (Lq,) gives a mask (Lq, P + L); (B, 1), one row per sequence, (B, 1, 1, P + L)."""
    keys = torch.arange(-n_prefix, length, device=query_rows.device)
    mask = keys <= query_rows[..., None]
    return mask if query_rows.dim() == 1 else mask[:, None]


def causal_from_mask(attn_mask):
    """OpenAI passes the text tower a (L, L) mask that hides later positions. The fused kernels here run
    that mask as ``is_causal``; any other mask would be silently ignored, so it is refused."""
    if attn_mask is None:
        return False
    length = attn_mask.shape[-1]
    hidden = torch.ones(length, length, dtype=torch.bool).triu(1)
    expected = hidden if attn_mask.dtype == torch.bool else torch.zeros(length, length).masked_fill(hidden, -torch.inf)
    mask = attn_mask.detach().cpu().to(expected.dtype)
    if mask.shape != expected.shape or not torch.equal(mask, expected):
        raise ValueError("attn_mask must be None or the causal (L, L) mask of OpenAI's text tower; this CLIP "
                         "runs attention through fused kernels that support no other mask")
    return True


def replace_rows(x, start, rows):
    """``x`` (B, L, W) with positions ``start`` .. ``start + P - 1`` replaced by ``rows``, (P, W) shared by
    every sequence or (B, P, W)."""
    rows = rows.to(x.dtype)
    if rows.dim() == 2:
        rows = rows.expand(x.shape[0], -1, -1)
    end = start + rows.shape[1]
    if start < 1 or end > x.shape[1]:
        raise ValueError(f"prompt positions {start}..{end - 1} do not fit a sequence of {x.shape[1]}")
    return torch.cat([x[:, :start], rows, x[:, end:]], dim=1)


def rowwise(layer, *tensors):
    """``layer`` on the rows of all ``tensors`` (..., W) in one call, split back: one pass over its
    weights instead of one per tensor, which matters when one of them has a handful of rows."""
    sizes = [t.numel() // t.shape[-1] for t in tensors]
    out = layer(torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors]))
    return [part.view(*t.shape[:-1], -1) for part, t in zip(out.split(sizes), tensors)]


class ResidualAttentionBlock(nn.Module):
    """OpenAI's block. ``forward`` and ``attention`` take OpenAI's sequence-first (L, N, W) tensors; the
    batch-first methods below are what the project's own paths call."""

    def __init__(self, d_model, n_head, attn_mask=None, mlp_width=None, act_layer=QuickGELU):
        """``mlp_width`` (default 4 x ``d_model``) and ``act_layer`` (QuickGELU, OpenAI's; ``nn.GELU`` for most
        open_clip models) are what open_clip's CLIP models vary."""
        super().__init__()
        mlp_width = mlp_width or d_model * 4
        # nn.MultiheadAttention only holds the parameters (in_proj_*, out_proj), named as OpenAI's.
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(d_model, mlp_width)), ("gelu", act_layer()),
                 ("c_proj", nn.Linear(mlp_width, d_model))]
            )
        )
        self.ln_2 = LayerNorm(d_model)
        self.heads = n_head
        self.attn_mask = attn_mask

    @property
    def attn_mask(self):
        return self._attn_mask

    @attn_mask.setter
    def attn_mask(self, mask):
        self.causal = causal_from_mask(mask)
        self._attn_mask = mask

    def forward(self, x):
        """(L, N, W) -> (L, N, W), OpenAI's layout."""
        return self.forward_batch_first(x.transpose(0, 1)).transpose(0, 1)

    def attention(self, x):
        """Self-attention of ``x`` (L, N, W), already normalised by ``ln_1``; OpenAI's layout."""
        return self.self_attention(x.transpose(0, 1)).transpose(0, 1)

    def split_heads(self, projected, parts):
        """(B, L, parts * W) -> ``parts`` tensors (B, heads, L, W // heads)."""
        batch, length = projected.shape[:2]
        return projected.view(batch, length, parts, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def merge_heads(self, out):
        """(B, heads, L, W // heads) -> (B, L, W)."""
        return out.transpose(1, 2).flatten(2)

    def projections(self, x, which):
        """``x`` normalised by ``ln_1``, projected to queries ("q"), keys and values ("kv") or all three."""
        width = x.shape[-1]
        rows = {"qkv": slice(None), "q": slice(0, width), "kv": slice(width, None)}[which]
        return F.linear(x, self.attn.in_proj_weight[rows], self.attn.in_proj_bias[rows])

    def self_attention(self, x):
        """Self-attention over every row of ``x`` (B, L, W), normalised by ``ln_1``."""
        q, k, v = self.split_heads(self.projections(x, "qkv"), 3)
        return self.attn.out_proj(self.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)))

    def forward_batch_first(self, x):
        x = x + self.self_attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_rows(self, x, rows, prefix=None):
        """The block's output at one row per sequence (B, W): all a pooled readout needs from the last
        block, for the keys and values of every row plus one query and one MLP row. ``prefix``: see
        ``forward_after_prefix``."""
        batch, length, _ = x.shape
        normed = self.ln_1(x)
        picked = torch.arange(batch, device=x.device), rows
        (q,) = self.split_heads(self.projections(normed[picked][:, None], "q"), 1)
        if prefix is None:
            k, v = self.split_heads(self.projections(normed, "kv"), 2)
        else:
            kv_prefix, kv = rowwise(lambda r: self.projections(r, "kv"), self.ln_1(prefix), normed)
            k, v = self.after_prefix(self.split_heads(kv_prefix, 2), self.split_heads(kv, 2))
        n_prefix = 0 if prefix is None else prefix.shape[1]
        mask = causal_mask(rows[:, None], length, n_prefix) if self.causal else None
        out = self.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))[:, 0]
        x = x[picked] + self.attn.out_proj(out)
        return x + self.mlp(self.ln_2(x))

    def forward_after_prefix(self, x, prefix):
        """One block on sequences that share their start (causal blocks only): ``prefix`` (G, P, W), the
        first P positions of B // G consecutive sequences of ``x`` (B, L, W), which holds the positions after
        them. -> (x, prefix), both advanced. The prefix is attended to from every row of ``x`` but computed
        once per group; row-wise layers take the rows of both in one call."""
        qkv_prefix, qkv = rowwise(lambda r: self.projections(self.ln_1(r), "qkv"), prefix, x)
        q_prefix, *kv_prefix = self.split_heads(qkv_prefix, 3)
        q, *kv = self.split_heads(qkv, 3)
        out_prefix = F.scaled_dot_product_attention(q_prefix, *kv_prefix, is_causal=True)
        mask = causal_mask(torch.arange(x.shape[1], device=x.device), x.shape[1], prefix.shape[1])
        out = F.scaled_dot_product_attention(q, *self.after_prefix(kv_prefix, kv), attn_mask=mask)
        attn_prefix, attn = rowwise(self.attn.out_proj, self.merge_heads(out_prefix), self.merge_heads(out))
        return rowwise(lambda r: r + self.mlp(self.ln_2(r)), x + attn, prefix + attn_prefix)

    def after_prefix(self, kv_prefix, kv):
        """Keys and values (B, H, L, d) of each sequence with its group's prefix (G, H, P, d) in front."""
        if not self.causal:
            raise ValueError("a shared prefix needs causal attention: it must not see what follows")
        group = kv[0].shape[0] // kv_prefix[0].shape[0]
        return [torch.cat([shared.repeat_interleave(group, dim=0), own], dim=2) for shared, own in zip(kv_prefix, kv)]


class Transformer(nn.Module):
    """A stack of residual attention blocks. ``forward`` is OpenAI's (L, N, W) call; the project's paths
    use ``forward_batch_first``."""

    def __init__(self, width, layers, heads, attn_mask=None, mlp_width=None, act_layer=QuickGELU):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask, mlp_width, act_layer)
                                         for _ in range(layers)])

    def forward(self, x):
        """(L, N, W) -> (L, N, W), OpenAI's layout."""
        return self.forward_batch_first(x.transpose(0, 1)).transpose(0, 1)

    def forward_batch_first(self, x, pooled_rows=None, prefix=None, deep_prompts=(), prompt_start=1):
        """(B, L, W) -> (B, L, W); with ``pooled_rows`` (B,), the last block's output at those rows (B, W).

        ``prefix`` (G, P, W), causal stacks only: the first P positions, shared by B // G consecutive
        sequences of ``x``, which holds the positions after them. The prefix runs once per group instead of
        once per sequence, and ``x``'s outputs are those of the full sequences.
        ``deep_prompts[i]`` ((P, W) or one per sequence) replaces the P positions from ``prompt_start`` at the
        input of layer i + 1; with a ``prefix`` those positions lie in it.
        """
        deep_prompts = list(deep_prompts or ())
        if len(deep_prompts) >= self.layers:
            raise ValueError(f"at most {self.layers - 1} deep prompt layers")
        for index, block in enumerate(self.resblocks):
            if 0 < index <= len(deep_prompts):
                if prefix is None:
                    x = replace_rows(x, prompt_start, deep_prompts[index - 1])
                else:
                    prefix = replace_rows(prefix, prompt_start, deep_prompts[index - 1])
            if index == self.layers - 1 and pooled_rows is not None:
                return block.forward_rows(x, pooled_rows, prefix)
            if prefix is None:
                x = block.forward_batch_first(x)
            else:
                x, prefix = block.forward_after_prefix(x, prefix)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim, mlp_width=None,
                 act_layer=QuickGELU):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.width = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        grid = input_resolution // patch_size
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_width=mlp_width, act_layer=act_layer)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x, prompts=None, deep_prompts=None):
        """Images (N, 3, H, W) -> (N, output_dim). ``prompts`` ((P, width) or (N, P, width)) join the sequence
        after the patches; ``deep_prompts[i]`` replaces them at the input of layer i + 1. Prompt outputs
        never reach ``ln_post``."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        n_tokens = x.shape[1]
        if prompts is not None:
            prompts = prompts.to(x.dtype)
            x = torch.cat([x, prompts.expand(x.shape[0], -1, -1) if prompts.dim() == 2 else prompts], dim=1)
        if deep_prompts and x.shape[1] == n_tokens:
            raise ValueError("deep_prompts need input prompts to replace")
        x = self.ln_pre(x)
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x = self.transformer.forward_batch_first(x, pooled_rows=class_token, deep_prompts=deep_prompts,
                                                 prompt_start=n_tokens)
        return self.ln_post(x) @ self.proj


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [("-1", nn.AvgPool2d(stride)),
                     ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                     ("1", nn.BatchNorm2d(planes * self.expansion))]
                )
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling of the final feature map, queried by the mean token."""

    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x):
        batch, channels = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        head_dim = channels // self.num_heads

        def heads(t):
            return t.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        q = heads(self.q_proj(x[:, :1]))
        out = F.scaled_dot_product_attention(q, heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.c_proj(out.transpose(1, 2).reshape(batch, channels))


class ModifiedResNet(nn.Module):
    """ResNet with a 3-conv stem, anti-aliased strided convolutions and attention pooling."""

    def __init__(self, layers, output_dim, heads, input_resolution=224, width=64):
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.width = width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x, prompts=None, deep_prompts=None):
        if prompts is not None or deep_prompts:
            raise ValueError("Visual prompts need a ViT image encoder; this backbone is a ResNet")
        x = x.type(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class CLIP(nn.Module):
    """OpenAI's constructor arguments; the keyword-only ones default to OpenAI's choices and describe the
    open_clip models of the same architecture (``clip/open_clip_models.py``): attention head width,
    MLP widths and activation."""

    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers, *,
                 vision_head_width=64, vision_mlp_width=None, text_mlp_width=None, act_layer=QuickGELU):
        super().__init__()
        self.context_length = context_length
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(vision_layers, embed_dim, vision_width * 32 // vision_head_width,
                                         image_resolution, vision_width)
        else:
            self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                            vision_width // vision_head_width, embed_dim, vision_mlp_width,
                                            act_layer)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       attn_mask=self.build_attention_mask(), mlp_width=text_mlp_width,
                                       act_layer=act_layer)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self):
        """Random weights for tests and the demo's pretraining; official weights overwrite them."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width = self.transformer.width
        proj_std = width ** -0.5 * (2 * self.transformer.layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def build_attention_mask(self):
        """OpenAI's causal mask for the text tower: -inf above the diagonal."""
        return torch.full((self.context_length, self.context_length), float("-inf")).triu_(1)

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, image):
        return self.visual(image.type(self.dtype))

    def encode_text(self, text):
        x = self.token_embedding(text).type(self.dtype) + self.positional_embedding.type(self.dtype)
        at_eot = self.transformer.forward_batch_first(x, pooled_rows=text.argmax(dim=-1))
        return self.ln_final(at_eot) @ self.text_projection

    def forward(self, image, text):
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def convert_weights(model):
    """fp16 for convolutions, linear layers, attention and projections, as OpenAI ships CLIP."""

    def to_fp16(module):
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        if isinstance(module, nn.MultiheadAttention):
            for name in ("in_proj_weight", "in_proj_bias", "bias_k", "bias_v"):
                tensor = getattr(module, name)
                if tensor is not None:
                    tensor.data = tensor.data.half()
        for name in ("text_projection", "proj"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.half()

    model.apply(to_fp16)


def architecture_from_state_dict(state_dict):
    """The CLIP constructor arguments implied by the shapes of an OpenAI-layout state dict."""
    vit = "visual.proj" in state_dict
    if vit:
        vision_width = state_dict["visual.conv1.weight"].shape[0]
        vision_layers = len({k.split(".")[3] for k in state_dict
                             if k.startswith("visual.transformer.resblocks.")})
        vision_patch_size = state_dict["visual.conv1.weight"].shape[-1]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        image_resolution = vision_patch_size * grid
    else:
        vision_layers = tuple(
            len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{b}.")})
            for b in (1, 2, 3, 4)
        )
        vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
        output_width = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_patch_size = None
        image_resolution = output_width * 32
    transformer_width = state_dict["ln_final.weight"].shape[0]
    return dict(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=transformer_width // 64,
        transformer_layers=len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")}),
    )


def missing_keys(state_dict):
    """The names a CLIP of this state dict's layout needs and it lacks (the shape-giving ones first, as
    the architecture is known only from them), sorted."""
    layout = (["visual.conv1.weight", "visual.positional_embedding"] if "visual.proj" in state_dict
              else ["visual.layer1.0.conv1.weight", "visual.attnpool.positional_embedding"])
    needed = layout + ["text_projection", "ln_final.weight", "positional_embedding", "token_embedding.weight"]
    missing = [key for key in needed if key not in state_dict]
    if missing:
        return sorted(missing)
    # The names depend on the layer counts alone: a twin of the same depth, a few units wide, has them all.
    vit = "visual.proj" in state_dict
    twin = dict(architecture_from_state_dict(state_dict), embed_dim=8, context_length=2, vocab_size=2,
                transformer_width=64, transformer_heads=1, vision_width=64 if vit else 8,
                vision_patch_size=1 if vit else None, image_resolution=1 if vit else 32)
    return sorted(set(CLIP(**twin).state_dict()) - set(state_dict))


def build_model(state_dict):
    """An fp16 CLIP in eval mode from an OpenAI-layout state dict (strict: every name must match)."""
    state_dict = {k: v for k, v in state_dict.items()
                  if k not in ("input_resolution", "context_length", "vocab_size")}
    return build_clip(state_dict, architecture_from_state_dict(state_dict))


def build_clip(state_dict, architecture):
    """An fp16 CLIP in eval mode with the constructor arguments ``architecture``, for models whose shapes
    alone do not say them (open_clip's: head width, MLP width, activation); weights loaded strictly."""
    model = CLIP(**architecture)
    convert_weights(model)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
