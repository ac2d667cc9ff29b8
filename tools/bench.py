"""Speed and memory of CoCoOp and MuPL against CoCoOp's reference design, side by side in one process.

    python -m tools.bench                 # ViT-B/16 shapes, C = 19, 100, 1000, batch 1 and 4
    python -m tools.bench --quick         # a few minutes on a CPU: C = 19 and 100, batch 1

The reference design is CoCoOp as its repository computes it: a Python loop over the images of the batch,
every class prompt run at CLIP's full 77 tokens. It is written here from the same modules, with the same
parameters as this project's CoCoOp, and its logits are checked against the fast path before timing.
CLIP has random weights at real shapes, so nothing is downloaded.
"""
import argparse
import json
import os
import platform
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from clip.model import CLIP, build_model
from dassl.config import get_cfg_default
from trainers import cocoop, mupl
from trainers.common import cast_clip

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
               transformer_layers=12)
WORDS = ["spotted", "long haired", "miniature", "great", "red", "saint", "siamese", "terrier", "hound", "cat"]


def class_names(count):
    """Names of one to four words, like benchmark class names (about 3-12 tokens of prompt each)."""
    return [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 3)) + f" {i}" for i in range(count)]


def node(module, name, **values):
    cfg = get_cfg_default()
    module.extend_cfg(cfg)
    for key, value in values.items():
        cfg.TRAINER[name][key] = value
    return cfg.TRAINER[name]


def reference_cocoop_logits(model, image):
    """CoCoOp's repository: per image, all class prompts at 77 tokens through the text tower."""
    image_features = model.encode_image(image)
    ctx = model.prompt_learner(image_features)
    scale = model.logit_scale.exp()
    clip_text = model.text_encoder
    logits = []
    for features, image_ctx in zip(image_features, ctx):
        prompts = model.class_prompts.assemble(image_ctx.type(model.dtype))
        x = prompts + clip_text.positional_embedding.type(model.dtype)
        x = clip_text.ln_final(clip_text.transformer(x))
        text = x[torch.arange(x.shape[0]), model.class_prompts.eot] @ clip_text.text_projection
        logits.append(scale * F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).t())
    return torch.stack(logits)


class PeakMemory:
    """CUDA's allocator peak on a GPU; on the CPU the resident-set peak, sampled by a thread."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = rss_bytes()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = max(self.peak, rss_bytes()) - self.base


def rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn, device, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    with PeakMemory(device) as memory:
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times), memory.bytes


def train_step(forward, model, optimizer, image, label):
    def step():
        optimizer.zero_grad()
        F.cross_entropy(forward(model, image), label).backward()
        optimizer.step()
    return step


def build_models(clip_model, names, device):
    torch.manual_seed(0)
    models = {
        "CoCoOp (this project)": cocoop.CoCoOpCLIP(node(cocoop, "COCOOP", N_CTX=4, CTX_INIT="a photo of a"),
                                                  names, clip_model),
        "MuPL (this project)": mupl.MuPLCLIP(node(mupl, "MUPL"), names, clip_model),
    }
    for model in models.values():
        model.to(device)
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("prompt_learner."))
    return models


def run(args):
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.manual_seed(0)
    clip_model = cast_clip(build_model(CLIP(**VIT_B16).state_dict()), "fp32" if device.type == "cpu" else args.prec)
    clip_model.to(device)
    rows = []
    for n_cls in args.classes:
        names = class_names(n_cls)
        models = build_models(clip_model, names, device)
        reference_model = models["CoCoOp (this project)"]
        for batch in args.batch:
            image = torch.randn(batch, 3, 224, 224, device=device)
            label = torch.arange(batch, device=device) % n_cls
            with torch.no_grad():
                fast, slow = reference_model(image), reference_cocoop_logits(reference_model, image)
            assert torch.allclose(fast.float(), slow.float(), atol=1e-3 * fast.abs().max().item()), \
                "fast and reference CoCoOp logits disagree"
            candidates = {
                "CoCoOp reference": (reference_model, reference_cocoop_logits),
                "CoCoOp (this project)": (reference_model, lambda m, x: m(x)),
                "MuPL (this project)": (models["MuPL (this project)"], lambda m, x: m(x)),
            }
            results = {}
            for method, (model, forward) in candidates.items():
                optimizer = torch.optim.SGD(model.prompt_learner.parameters(), lr=1e-3)
                step = train_step(forward, model, optimizer, image, label)
                train_s, train_mem = timed(step, device, args.repeats, args.warmup)

                def infer(model=model, forward=forward):
                    with torch.no_grad():
                        forward(model, image)

                infer_s, infer_mem = timed(infer, device, args.repeats, args.warmup)
                results[method] = dict(train_ms_per_image=1000 * train_s / batch,
                                       infer_ms_per_image=1000 * infer_s / batch,
                                       train_images_per_s=batch / train_s, infer_images_per_s=batch / infer_s,
                                       train_peak_mib=train_mem / 2 ** 20, infer_peak_mib=infer_mem / 2 ** 20)
                print(f"C={n_cls:<5} B={batch} {method:<22} train {results[method]['train_ms_per_image']:9.1f} "
                      f"ms/img  infer {results[method]['infer_ms_per_image']:9.1f} ms/img  "
                      f"peak {results[method]['train_peak_mib']:8.1f} MiB", flush=True)
            ref = results["CoCoOp reference"]
            for method, result in results.items():
                result["train_ratio_to_reference"] = result["train_ms_per_image"] / ref["train_ms_per_image"]
                result["infer_speedup_vs_reference"] = result["infer_images_per_s"] / ref["infer_images_per_s"]
                rows.append(dict(classes=n_cls, batch=batch, method=method, **result))
    return device, rows


def markdown(rows, machine):
    lines = [f"Machine: {machine}", "",
             "| C | batch | method | train ms/img | x ref | infer ms/img | infer img/s | x ref speed | train peak MiB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['classes']} | {r['batch']} | {r['method']} | {r['train_ms_per_image']:.1f} | "
                     f"{r['train_ratio_to_reference']:.2f} | {r['infer_ms_per_image']:.1f} | "
                     f"{r['infer_images_per_s']:.2f} | {r['infer_speedup_vs_reference']:.2f} | "
                     f"{r['train_peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="C = 19 and 100, batch 1, 2 repeats")
    parser.add_argument("--classes", type=int, nargs="+", default=[19, 100, 1000])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prec", default="fp16", choices=["fp16", "fp32"], help="CLIP precision on a GPU")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    parser.add_argument("--out", default="output/bench", help="folder for bench.json and bench.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.batch, args.repeats, args.warmup = [19, 100], [1], 2, 1
    device, rows = run(args)
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as handle:
        json.dump({"machine": machine, "torch": torch.__version__, "rows": rows}, handle, indent=2)
    table = markdown(rows, machine)
    with open(os.path.join(args.out, "bench.md"), "w") as handle:
        handle.write(table)
    print(table)


if __name__ == "__main__":
    main()
