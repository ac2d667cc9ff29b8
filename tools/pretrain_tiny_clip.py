"""Pretrain the demo's tiny CLIP on the toy world with CLIP's contrastive loss.

    python -m tools.pretrain_tiny_clip --out toyworld/toyclip-seed0.pt --force [--steps 1500] [--seed 0]

The repository ships the result of the command above (docs/demo.md gives its SHA-256). The weights are
saved as an OpenAI-layout state dict, so ``clip.load(path)`` and
``MODEL.BACKBONE.NAME path`` take them like any official backbone. The same command and seed give the
same weights on the same machine: CPU, fixed seeds, deterministic kernels and one thread (the reduction
order of a multi-threaded matmul depends on the thread count; for a model this small one thread is also
the fastest on a busy machine).
"""
import argparse
import contextlib
import math
import os
import os.path as osp

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import clip
from clip.clip import CLIP_MEAN, CLIP_STD
from clip.model import CLIP
from clip.prompting import TextEncoder
from dassl.utils import atomic_write
from toyworld.world import caption, draw, random_object

SHIPPED_WEIGHTS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "toyworld", "toyclip-seed0.pt")
TOY_CLIP = dict(embed_dim=64, image_resolution=32, vision_layers=3, vision_width=64, vision_patch_size=4,
                context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                transformer_layers=3)


def image_pool(count, seed):
    """(images (N, 3, 32, 32) normalised as CLIP's preprocessing, object attributes)."""
    rng = np.random.default_rng(seed)
    objects = [random_object(rng) for _ in range(count)]
    pixels = np.stack([np.asarray(draw(*obj, seed=seed * 1_000_003 + i)) for i, obj in enumerate(objects)])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (images - mean) / std, objects


def release_state_dict(model):
    """Float tensors in fp16, as in OpenAI's release files (and half the size on disk)."""
    return {name: tensor.detach().clone().half() if tensor.is_floating_point() else tensor.detach().clone()
            for name, tensor in model.state_dict().items()}


@contextlib.contextmanager
def reproducible(seed):
    """Seeded, one thread, deterministic kernels; the caller's settings and RNG are restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def train_contrastive(steps, batch_size, pool_size, lr, seed):
    model = CLIP(**TOY_CLIP)
    text_encoder = TextEncoder(model)
    images, objects = image_pool(pool_size, seed)
    rng = np.random.default_rng(seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    bar = tqdm(range(steps), desc="pretraining tiny CLIP")
    for _ in bar:
        index = rng.choice(pool_size, batch_size, replace=False)
        texts = [caption(*objects[i], rng) for i in index]
        tokens = clip.tokenize(texts)
        image_features = F.normalize(model.encode_image(images[index]), dim=-1)
        text_features = F.normalize(text_encoder(model.token_embedding(tokens), tokens.argmax(-1)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_features @ text_features.t()
        # captions can repeat within a batch: every image matching a caption counts as a positive
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
        loss = (F.cross_entropy(logits, same / same.sum(1, keepdim=True))
                + F.cross_entropy(logits.t(), same / same.sum(0, keepdim=True).t())) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model


def pretrain(out, steps=1500, batch_size=128, pool_size=12000, lr=2e-3, seed=0):
    with reproducible(seed):
        model = train_contrastive(steps, batch_size, pool_size, lr, seed)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with atomic_write(out) as handle:
        torch.save(release_state_dict(model), handle)
    print(f"Saved tiny CLIP weights to {out}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=SHIPPED_WEIGHTS)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="retrain even when --out exists")
    args = parser.parse_args(argv)
    if osp.isfile(args.out) and not args.force:
        print(f"Using the cached tiny CLIP at {args.out} (--force retrains)")
        return
    pretrain(args.out, steps=args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
