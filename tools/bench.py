"""Speed and memory of CoCoOp and MuPL against CoCoOp's reference design (docs/performance.md).

    python -m tools.bench                          # ViT-B/16 shapes, C = 19, 100, 1000, batch 1 and 4
    python -m tools.bench --quick                  # C = 19 and 100, batch 1, 2 repeats: minutes on a CPU
    python -m tools.bench --quick --backbone tiny  # the tiny test CLIP (clip/tiny.py): seconds

The reference design is CoCoOp as its repository computes it: a Python loop over the images of the batch,
every class prompt at CLIP's full 77 tokens, and every row of the image tower's last block computed
although only the class token is read. It is this project's own model with those two paths swapped
(``reference_path``), so parameters and everything else are shared; "MuPL reference" is MuPL with the same
swaps. Every reference's logits are checked against the fast path before timing. CLIP has
random weights at real shapes, so nothing is downloaded.

Peak memory is a configuration's (method, C, batch, train or infer) working memory: its peak over what is
resident just before its warm-up runs, so neither the model build nor another configuration counts. GPU:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU (Linux, glibc): freed heap is
handed back to the OS (``malloc_trim``), so nothing an earlier configuration freed can be reused unseen,
then the kernel's resident high-water mark is restarted (``/proc/self/clear_refs`` "5") and read back as
``ru_maxrss`` after the configuration's warm-up runs (the timed runs repeat them). Elsewhere the CPU peak
is reported as null.
"""
import argparse
import contextlib
import ctypes
import functools
import json
import os
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from clip.model import CLIP, build_model
from clip.tiny import build_tiny_clip
from dassl.utils import atomic_write
from trainers import cocoop, mupl
from trainers.common import cast_clip, default_trainer_node, freeze_all_but_prompt_learner

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
               transformer_layers=12)
WORDS = ["spotted", "long haired", "miniature", "great", "red", "saint", "siamese", "terrier", "hound", "cat"]
REFERENCE = "CoCoOp reference"
METHODS = {  # method -> (model, whether its text path is the reference loop)
    REFERENCE: ("CoCoOp", True),
    "CoCoOp (this project)": ("CoCoOp", False),
    "MuPL reference": ("MuPL", True),
    "MuPL (this project)": ("MuPL", False),
}
MODES = ("train", "infer")


def class_names(count):
    """Names of one to four words, like benchmark class names (about 3-12 tokens of prompt each)."""
    return [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 3)) + f" {i}" for i in range(count)]


def build_clip(backbone, prec):
    torch.manual_seed(0)
    clip_model = build_tiny_clip("vit") if backbone == "tiny" else build_model(CLIP(**VIT_B16).state_dict())
    return cast_clip(clip_model, prec)


def build_models(clip_model, names, device):
    torch.manual_seed(0)
    models = {
        "CoCoOp": cocoop.CoCoOpCLIP(default_trainer_node(cocoop, "COCOOP", N_CTX=4, CTX_INIT="a photo of a"),
                                    names, clip_model),
        "MuPL": mupl.MuPLCLIP(default_trainer_node(mupl, "MUPL"), names, clip_model),
    }
    for model in models.values():
        model.to(device)
        freeze_all_but_prompt_learner(model)
    return models


def reference_text(tower, per_image_prompts, eot):
    """CoCoOp's repository's text path, as written there against OpenAI's CLIP: each image's (C, 77, D)
    prompts through the whole text tower (all 77 positions, every row of the last block; sequence-first, as
    OpenAI's ``transformer`` takes them), read at EOT -> (B, C, E), not normalised. ``tower`` is a CLIP
    model or a ``TextEncoder`` (the same attribute names)."""
    features = []
    for prompts in per_image_prompts:
        x = prompts + tower.positional_embedding.type(prompts.dtype)
        x = tower.ln_final(tower.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
        features.append(x[torch.arange(x.shape[0]), eot] @ tower.text_projection)
    return torch.stack(features)


def reference_instance_text(model, ctx):
    """(B, n_ctx, D) -> (B, C, E) normalised, each image's prompts assembled inside the loop as there."""
    prompts = (model.class_prompts.assemble(image_ctx.type(model.dtype)) for image_ctx in ctx)
    return F.normalize(reference_text(model.text_encoder, prompts, model.class_prompts.eot), dim=-1)


def full_last_block(block, x, rows, prefix=None):
    """CLIP's own readout of the image tower (no shared prefix): the whole last block, then one row per
    sequence."""
    assert prefix is None
    return block.forward_batch_first(x)[torch.arange(x.shape[0], device=x.device), rows]


@contextlib.contextmanager
def reference_path(model):
    """The model's own forward with the reference's text loop and full last image block swapped in."""
    model.encode_instance_text = functools.partial(reference_instance_text, model)
    tower = getattr(model.image_encoder, "transformer", None)  # ViT; a ResNet has no such block
    last = tower.resblocks[-1] if tower is not None else None
    if last is not None:
        last.forward_rows = functools.partial(full_last_block, last)
    try:
        yield model
    finally:
        del model.encode_instance_text
        if last is not None:
            del last.forward_rows


def logits(model, image, reference):
    if not reference:
        return model(image)
    with reference_path(model):
        return model(image)


def reset_resident_peak():
    """Trim the heap and restart the resident high-water mark; False where Linux + glibc are missing."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:  # not Linux, or a read-only /proc
        return False
    return True


def max_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class PeakMemory:
    """Bytes of peak memory over the baseline at entry (see the module docstring); None if unmeasurable."""

    def __init__(self, device):
        self.device = device
        self.bytes = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.measurable, self.base = True, torch.cuda.memory_allocated()
        else:
            self.measurable = reset_resident_peak()
            self.base = max_rss_bytes()
        return self

    def __exit__(self, *exc):
        if not self.measurable:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.bytes = max_rss_bytes() - self.base


def timed(fn, device):
    """Seconds of one call; on a GPU, until the work it queued is done."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(fns, device, repeats, warmup):
    """[(median seconds, peak bytes or None)] for each function.

    Each function's peak memory is that of its own warm-up runs (at least one), taken one function at a
    time. The timed runs then go in rounds, every function once per round, so load that comes and goes on
    a shared machine lands on all of them alike, and the ratios between them hold even when the absolute
    times drift.
    """
    peaks = []
    for fn in fns:
        with PeakMemory(device) as memory:
            for _ in range(max(1, warmup)):
                fn()
        peaks.append(memory.bytes)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            samples.append(timed(fn, device))
    return [(statistics.median(samples), peak) for samples, peak in zip(times, peaks)]


def step_fn(model, image, label, reference, mode):
    if mode == "infer":
        def infer():
            with torch.no_grad():
                logits(model, image, reference)
        return infer
    optimizer = torch.optim.SGD(model.prompt_learner.parameters(), lr=1e-3)

    def train():
        optimizer.zero_grad()
        F.cross_entropy(logits(model, image, reference), label).backward()
        optimizer.step()
    return train


def check_reference(model, image):
    with torch.no_grad():
        fast, slow = logits(model, image, False).float(), logits(model, image, True).float()
    if not torch.allclose(fast, slow, atol=1e-3 * fast.abs().max().item()):
        raise AssertionError(f"fast and reference logits of {type(model).__name__} disagree")


def run(args):
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    clip_model = build_clip(args.backbone, "fp32" if device.type == "cpu" else args.prec).to(device)
    resolution = clip_model.visual.input_resolution
    rows = []
    for n_cls in args.classes:
        models = build_models(clip_model, class_names(n_cls), device)
        for batch in args.batch:
            image = torch.randn(batch, 3, resolution, resolution, device=device)
            label = torch.arange(batch, device=device) % n_cls
            for name in {METHODS[m][0] for m in args.methods if METHODS[m][1]}:
                check_reference(models[name], image)
            for mode in args.modes:
                steps = [step_fn(models[METHODS[m][0]], image, label, METHODS[m][1], mode) for m in args.methods]
                results = measure(steps, device, args.repeats, args.warmup)
                for method, (seconds, peak) in zip(args.methods, results):
                    rows.append(dict(backbone=args.backbone, classes=n_cls, batch=batch, method=method, mode=mode,
                                     ms_per_image=1000 * seconds / batch, images_per_s=batch / seconds,
                                     peak_mib=None if peak is None else peak / 2 ** 20))
                    print(f"C={n_cls:<5} B={batch} {mode:<5} {method:<22} {rows[-1]['ms_per_image']:9.1f} ms/img  "
                          f"peak {fmt(rows[-1]['peak_mib'], '.0f')} MiB", flush=True)
        del models
    add_ratios(rows)
    return device, rows


def add_ratios(rows):
    """Time and peak of each row over the CoCoOp reference's at the same C, batch and mode (None without one)."""
    refs = {(r["classes"], r["batch"], r["mode"]): r for r in rows if r["method"] == REFERENCE}
    for row in rows:
        ref = refs.get((row["classes"], row["batch"], row["mode"]))
        row["ratio_to_reference"] = None if ref is None else row["ms_per_image"] / ref["ms_per_image"]
        row["speedup_vs_reference"] = None if ref is None else row["images_per_s"] / ref["images_per_s"]
        row["peak_ratio_to_reference"] = (
            row["peak_mib"] / ref["peak_mib"] if ref is not None and row["peak_mib"] is not None and ref["peak_mib"]
            else None
        )


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def markdown(rows, machine):
    lines = [f"Machine: {machine}", "",
             "| mode | C | batch | method | ms/img | img/s | time x ref | img/s x ref | peak MiB | peak x ref |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['classes']} | {r['batch']} | {r['method']} | {r['ms_per_image']:.1f} | "
                     f"{r['images_per_s']:.2f} | {fmt(r['ratio_to_reference'], '.2f')} | "
                     f"{fmt(r['speedup_vs_reference'], '.2f')} | {fmt(r['peak_mib'], '.0f')} | "
                     f"{fmt(r['peak_ratio_to_reference'], '.2f')} |")
    return "\n".join(lines) + "\n"


def machine_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="defaults C = 19 and 100, batch 1, 2 repeats")
    parser.add_argument("--backbone", default="vit_b16", choices=["vit_b16", "tiny"],
                        help="ViT-B/16 shapes, or the tiny test CLIP of clip/tiny.py")
    parser.add_argument("--classes", type=int, nargs="+", help="default 19 100 1000")
    parser.add_argument("--batch", type=int, nargs="+", help="default 1 4")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, help="timed runs per configuration (median); default 5")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prec", default="fp16", choices=["fp16", "fp32"], help="CLIP precision on a GPU")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default="output/bench", help="folder for bench.json and bench.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = dict(classes=[19, 100], batch=[1], repeats=2)
    full = dict(classes=[19, 100, 1000], batch=[1, 4], repeats=5)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device, rows = run(args)
    machine = machine_name(device)
    os.makedirs(args.out, exist_ok=True)
    with atomic_write(os.path.join(args.out, "bench.json"), mode="w") as handle:
        json.dump({"machine": machine, "torch": torch.__version__, "rows": rows}, handle, indent=2)
    table = markdown(rows, machine)
    with atomic_write(os.path.join(args.out, "bench.md"), mode="w") as handle:
        handle.write(table)
    print(table)


if __name__ == "__main__":
    main()
