"""The text side of prompt learning, written once for every trainer.

``ClassPrompts`` holds the fixed token embeddings around the learnable context of
``[SOS] ctx_1 .. ctx_M classname . [EOT]``; ``TextEncoder`` runs assembled prompts through CLIP's text
transformer. Because that transformer is causal and the feature is read at EOT, every position after
the longest EOT is cut before it runs (the output is identical), and any number of prompt sets
(B images x C classes) go through in chunked calls. For the same reason ``[SOS] ctx_1 .. ctx_M``, the
same in all C prompts of an image, can run once per image instead of once per class
(``encode_shared_prefix``).
"""
import torch
from torch import nn

from .clip import tokenize
from .simple_tokenizer import get_tokenizer


class PromptTooLong(ValueError):
    """A class prompt that does not fit CLIP's context (77 tokens for OpenAI's models, the model's own for
    open_clip's); the message names the class and the fix."""


class TextEncoder(nn.Module):
    def __init__(self, clip_model, chunk_size=1024):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.chunk_size = chunk_size

    def at_positions(self, embeddings, start=0):
        """Token embeddings (..., L, D) in the tower's dtype, plus the positional embedding of positions
        ``start`` .. ``start + L - 1``."""
        dtype = self.text_projection.dtype
        length = embeddings.shape[-2]
        return embeddings.type(dtype) + self.positional_embedding[start : start + length].type(dtype)

    def forward(self, prompts, eot, deep_prompts=None):
        """``prompts`` (..., L, D) token embeddings, ``eot`` (...) EOT positions -> (..., E).
        ``deep_prompts[i]`` (n, D) replaces positions 1 .. n (the context after [SOS]) at the input of layer
        i + 1, as deep text prompting does."""
        leading = prompts.shape[:-2]
        length = int(eot.max()) + 1
        x = self.at_positions(prompts.reshape(-1, *prompts.shape[-2:])[:, :length])
        eot = eot.reshape(-1).to(x.device)
        features = []
        for start in range(0, x.shape[0], self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            at_eot = self.transformer.forward_batch_first(x[chunk], pooled_rows=eot[chunk], deep_prompts=deep_prompts)
            features.append(self.ln_final(at_eot) @ self.text_projection)
        return torch.cat(features).reshape(*leading, -1)

    def encode_shared_prefix(self, prefix, suffix, eot, deep_prompts=None):
        """Prompts ``prefix[g] + suffix[c]`` for every g, c -> features (G, C, E).

        ``prefix`` (G, P, D) token embeddings of the positions every class shares (one row per image),
        ``suffix`` (C, L - P, D) those of each class after them, ``eot`` (C,) EOT positions in the whole
        prompt. Each prefix runs through the tower once, not once per class; the features are those of the
        assembled prompts. Chunks hold whole images of at most ``chunk_size`` prompts, or part of one image's
        classes when it has more. ``deep_prompts`` as in ``forward``: they replace positions inside the
        prefix, so it stays shared.
        """
        n_prefix = prefix.shape[1]
        length = int(eot.max()) + 1
        if int(eot.min()) < n_prefix:
            raise ValueError(f"every EOT must come after the {n_prefix} shared prefix positions")
        prefix = self.at_positions(prefix)
        suffix = self.at_positions(suffix[:, : length - n_prefix], start=n_prefix)
        rows = eot.to(suffix.device) - n_prefix
        n_images, n_classes = prefix.shape[0], suffix.shape[0]
        images_per_chunk = max(1, self.chunk_size // n_classes)
        classes_per_chunk = min(n_classes, self.chunk_size)
        features = []
        for first_image in range(0, n_images, images_per_chunk):
            shared = prefix[first_image : first_image + images_per_chunk]
            per_image = []
            for first_class in range(0, n_classes, classes_per_chunk):
                own = suffix[first_class : first_class + classes_per_chunk]
                x = own.expand(shared.shape[0], *own.shape).reshape(-1, *own.shape[1:])
                pooled_rows = rows[first_class : first_class + classes_per_chunk].repeat(shared.shape[0])
                at_eot = self.transformer.forward_batch_first(x, pooled_rows=pooled_rows, prefix=shared,
                                                              deep_prompts=deep_prompts)
                at_eot = self.ln_final(at_eot)
                per_image.append((at_eot @ self.text_projection).view(len(shared), len(own), -1))
            features.append(torch.cat(per_image, dim=1))
        return torch.cat(features)


class ClassPrompts(nn.Module):
    """Token embeddings of ``"X X .. X {classname}."`` (or ``"{ctx_init} {classname}."``) around ``n_ctx``
    context slots, per class. The slots are the first ``n_ctx`` tokens after SOS; tokens of ``ctx_init`` beyond
    them stay fixed in every prompt (as CoOp, IVLP and MaPLe do), ``fixed_init_tokens`` of them.

    Buffers (rebuilt for any class list, never learned): ``token_prefix`` (C, 1, D) the SOS embedding,
    ``token_suffix`` (C, L - 1 - n_ctx, D) class name, period, EOT and padding, ``eot`` (C,) and
    ``name_lens`` (C,) the number of tokens of each class name.
    """

    def __init__(self, clip_model, classnames, n_ctx, ctx_init=None):
        super().__init__()
        names = [name.replace("_", " ") for name in classnames]
        self.fixed_init_tokens = 0
        if ctx_init:
            ctx_init = ctx_init.replace("_", " ")
            n_tokens = len(get_tokenizer().encode(ctx_init))
            if n_tokens < n_ctx:
                raise ValueError(f"CTX_INIT {ctx_init!r} has {n_tokens} tokens, fewer than the {n_ctx} context "
                                 "vectors it should initialise")
            self.fixed_init_tokens = n_tokens - n_ctx
        prefix = ctx_init or " ".join(["X"] * n_ctx)
        texts = [f"{prefix} {name}." for name in names]
        context_length = clip_model.context_length
        for name, text in zip(names, texts):
            length = len(get_tokenizer().encode(text)) + 2  # with SOS and EOT
            if length > context_length:
                raise PromptTooLong(
                    f'The prompt of class "{name}" is {length} tokens with its context ("{prefix} {name}."); this '
                    f"CLIP reads at most {context_length}: shorten the class name, or N_CTX / CTX_INIT")
        tokens = tokenize(texts, context_length)
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokens).type(clip_model.text_projection.dtype)
        self.n_ctx = n_ctx
        self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("eot", tokens.argmax(dim=-1), persistent=False)
        self.register_buffer(
            "name_lens", torch.tensor([len(get_tokenizer().encode(n)) for n in names]), persistent=False
        )
        self._init_vectors = embedding[0, 1 : 1 + n_ctx].clone() if ctx_init else None

    def ctx_init_vectors(self):
        """(n_ctx, D) token embeddings of CTX_INIT, the starting point of the learnable context."""
        if self._init_vectors is None:
            raise ValueError("ClassPrompts was built without ctx_init")
        return self._init_vectors

    def shared_prefix(self, ctx):
        """``[SOS] ctx`` for each image, (B, n_ctx, D) -> (B, 1 + n_ctx, D): what all its C prompts share
        when the class name comes last (``token_suffix`` holds the rest)."""
        sos = self.token_prefix[:1].type(ctx.dtype)
        return torch.cat([sos.expand(ctx.shape[0], -1, -1), ctx], dim=1)

    def assemble(self, ctx, batched=False):
        """ctx (n_ctx, D) or (C, n_ctx, D) -> (C, L, D); with ``batched``, (B, n_ctx, D) -> (B, C, L, D)."""
        n_cls = self.token_prefix.shape[0]
        prefix, suffix = self.token_prefix.type(ctx.dtype), self.token_suffix.type(ctx.dtype)
        if batched:
            batch = ctx.shape[0]
            ctx = ctx[:, None].expand(batch, n_cls, -1, -1)
            return torch.cat([prefix.expand(batch, -1, -1, -1), ctx, suffix.expand(batch, -1, -1, -1)], dim=2)
        if ctx.dim() == 2:
            ctx = ctx.expand(n_cls, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=1)
