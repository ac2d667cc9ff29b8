"""Speed and memory of each prompt learner against its reference design (docs/performance.md).

    python -m tools.bench                          # ViT-B/16 shapes, C = 19, 100, 1000, each recipe's batch
    python -m tools.bench --quick                  # C = 19, 2 repeats: minutes on a CPU
    python -m tools.bench --quick --backbone tiny  # tiny widths at CLIP's 12 layers (clip/tiny.py): seconds
    python -m tools.bench --backbone ViT-L-14      # an open_clip architecture's shapes (ViT-H-14, RN50x4, ...)

Each method is its registered trainer, built as train.py builds it from the trainer's default recipe
(``configs/trainers/<T>/default_cfg.txt``: prompt sizes and depths, optimiser, batch size), with class
names instead of a dataset and a CLIP of random weights at real shapes, so nothing is downloaded. A train
step is the trainer's own ``forward_backward`` (every loss term, its update rule, the optimiser step);
inference is its ``model_inference``.

A method's reference design is the official code's path: the same trainer and model (same parameters)
with two paths swapped by ``reference_path``. Text: each image's C class prompts through CLIP's tower at
all 77 tokens (the model's context length), deep text prompts replacing positions 1..n at the input of
layers 1..J-1, one tower call per image as CoCoOp's loop makes it (one per step where the prompts do not
depend on the image); images: CLIP's full last block in every image tower, although only the class token
is read. Logits and every loss term of both designs are checked equal before anything is timed.

Peak memory is a configuration's (method, C, batch, train or infer) working memory: its peak over what is
resident just before its warm-up runs, so neither the model build nor another configuration counts. GPU:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU (Linux, glibc): freed heap is
handed back to the OS (``malloc_trim``), so nothing an earlier configuration freed can be reused unseen,
then the kernel's resident high-water mark is restarted (``/proc/self/clear_refs`` "5") and read back as
``ru_maxrss`` after the configuration's warm-up runs (the timed runs repeat them). Elsewhere the CPU peak
is reported as null. ``--flops`` adds the floating-point operations of one step, counted by
``torch.utils.flop_counter`` with attention on its math kernel (every query-key pair, causal or not).
"""
import argparse
import contextlib
import ctypes
import functools
import io
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import plugins
import train
from clip.model import CLIP, VisionTransformer, build_model
from clip.open_clip_models import (
    OpenCLIPError,
    architecture,
    build_from_open_clip,
    check_clip_architecture,
    import_open_clip,
)
from clip.tiny import build_tiny_clip
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import atomic_write
from trainers.common import cast_clip

REPO = Path(__file__).resolve().parents[1]
VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
               transformer_layers=12)
TINY_DEPTH = dict(vision_layers=12, transformer_layers=12)  # recipes name depths up to 12
DATASET_CONFIG = "configs/datasets/oxford_pets.yaml"  # its base split has the issue's C = 19 classes
WORDS = ["spotted", "long haired", "miniature", "great", "red", "saint", "siamese", "terrier", "hound", "cat"]
# Trainer -> the trainer whose reference design its "x ref" columns divide by. MuPL's target is CoCoOp's
# reference design (CoCoOp's repository is where MuPL's text path comes from). A trainer joins with one entry.
TRAINERS = {"CoCoOp": "CoCoOp", "MuPL": "CoCoOp", "IVLP": "IVLP", "VPT": "VPT", "MaPLe": "MaPLe",
            "PromptSRC": "PromptSRC", "KgCoOp": "KgCoOp", "ProGrad": "ProGrad"}
MODES = ("train", "infer")


def reference_name(trainer):
    return f"{trainer} reference"


METHODS = {  # method -> (trainer, whether it runs the reference design)
    name: (trainer, reference)
    for trainer in TRAINERS
    for name, reference in ((reference_name(trainer), True), (f"{trainer} (this project)", False))
}


def class_names(count):
    """Names of one to four words, like benchmark class names (about 3-12 tokens of prompt each)."""
    return [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 3)) + f" {i}" for i in range(count)]


def random_clip(backbone):
    """An fp16 CLIP with seeded random weights: ViT-B/16's shapes, the tiny CLIP's widths at 12 layers, or
    an open_clip architecture's (widths, layers, patch, image size, context length, activation)."""
    torch.manual_seed(0)
    if backbone == "tiny":
        return build_tiny_clip("vit", **TINY_DEPTH)
    if backbone == "vit_b16":
        return build_model(CLIP(**VIT_B16).state_dict())
    model_cfg = import_open_clip(backbone).get_model_config(backbone)
    if model_cfg is None:
        raise SystemExit(f"bench: --backbone {backbone} is none of vit_b16, tiny or an open_clip architecture "
                         "(open_clip.list_models())")
    try:
        check_clip_architecture(model_cfg, backbone)
    except OpenCLIPError as error:
        raise SystemExit(f"bench: {error}") from None
    quick_gelu = bool(model_cfg.get("quick_gelu"))
    return build_from_open_clip(CLIP(**architecture(model_cfg, quick_gelu)).state_dict(), model_cfg, quick_gelu)


def backbone_name(backbone, weights):
    """MODEL.BACKBONE.NAME of the bench's weights file: the file itself, or ``ARCH/path`` for an open_clip
    architecture, so the trainers build its architecture (head widths, activation) as for its real weights."""
    return weights if backbone in ("vit_b16", "tiny") else f"{backbone}/{weights}"


def build_clip(backbone, prec):
    return cast_clip(random_clip(backbone), prec)


# --- the reference design -------------------------------------------------------------------------------

def reference_text(tower, per_image_prompts, eot, deep_prompts=()):
    """The official text path, as written there against OpenAI's CLIP: each image's (C, 77, D) prompts
    through the whole text tower (all 77 positions, every row of the last block; sequence-first, block by
    block as OpenAI's ``transformer`` runs them), ``deep_prompts[i]`` (n, D) replacing positions 1..n at the
    input of block i + 1, read at EOT -> (B, C, E), not normalised. ``tower`` is a CLIP model or a
    ``TextEncoder`` (the same attribute names)."""
    features = []
    for prompts in per_image_prompts:
        x = (prompts + tower.positional_embedding.type(prompts.dtype)).permute(1, 0, 2)
        for index, block in enumerate(tower.transformer.resblocks):
            if 1 <= index <= len(deep_prompts):
                deep = deep_prompts[index - 1].type(x.dtype)
                x = torch.cat([x[:1], deep[:, None].expand(-1, x.shape[1], -1), x[1 + deep.shape[0]:]])
            x = block(x)
        x = tower.ln_final(x.permute(1, 0, 2))
        features.append(x[torch.arange(x.shape[0]), eot] @ tower.text_projection)
    return torch.stack(features)


def reference_instance_text(model, ctx, deep_prompts=None):
    """``encode_instance_text`` the official way: (B, n_ctx, D) -> (B, C, E) normalised, each image's
    prompts assembled at 77 tokens inside the loop."""
    prompts = (model.class_prompts.assemble(image_ctx.type(model.dtype)) for image_ctx in ctx)
    return F.normalize(reference_text(model.text_encoder, prompts, model.class_prompts.eot, deep_prompts or ()),
                       dim=-1)


def full_last_block(block, x, rows, prefix=None):
    """CLIP's own readout of the image tower (no shared prefix): the whole last block, then one row per
    sequence."""
    assert prefix is None
    return block.forward_batch_first(x)[torch.arange(x.shape[0], device=x.device), rows]


@contextlib.contextmanager
def reference_path(model):
    """The model's own forward with the official code's paths swapped in: its per-step text (if it has
    one) through ``reference_instance_text``, CLIP's full last block in every ViT image tower it holds
    (the prompted one, and a frozen zero-shot one where the method has it)."""
    swapped = []
    if hasattr(model, "encode_instance_text"):
        model.encode_instance_text = functools.partial(reference_instance_text, model)
        swapped.append((model, "encode_instance_text"))
    for tower in model.modules():
        if isinstance(tower, VisionTransformer):
            last = tower.transformer.resblocks[-1]
            last.forward_rows = functools.partial(full_last_block, last)
            swapped.append((last, "forward_rows"))
    try:
        yield model
    finally:
        for owner, name in swapped:
            delattr(owner, name)


def design(model, reference):
    return reference_path(model) if reference else contextlib.nullcontext(model)


def outputs(model, image, label, reference):
    """Inference logits and every training loss term of one design, without autograd."""
    with torch.no_grad(), design(model, reference):
        loss, train_logits = model.training_loss(image, label)
        terms = loss if isinstance(loss, dict) else {"loss": loss}
        return {"logits": model(image), "training logits": train_logits, **terms}


def first_run(trainer, image, label, check_reference):
    """The fast design once before anything is measured, so per-class-set caches (hand-written prompt
    features) are filled outside every timing, peak and count; with ``check_reference``, the reference
    design's outputs must equal its outputs, to 1e-3 of their largest value or a few roundings of the
    model's dtype (fp16, bf16 sum in another order)."""
    fast = outputs(trainer.model, image, label, reference=False)
    if not check_reference:
        return
    slow = outputs(trainer.model, image, label, reference=True)
    tolerance = max(1e-3, 8 * torch.finfo(trainer.model.dtype).eps)
    for name, value in fast.items():
        value, expected = value.float(), slow[name].float()
        if not torch.allclose(value, expected, atol=tolerance * max(expected.abs().max().item(), 1e-3)):
            raise AssertionError(f"{trainer.cfg.TRAINER.NAME}: {name} of the fast and the reference design disagree")


# --- trainers as train.py builds them -------------------------------------------------------------------

def recipe_file(trainer):
    folder = REPO / "configs" / "trainers" / trainer
    return folder / f"{(folder / 'default_cfg.txt').read_text().strip()}.yaml"


def recipe_cfg(trainer, weights, resolution, cpu, prec=None, extra=()):
    """train.py's config for the trainer's default recipe, with the bench's CLIP weights (a file, or
    ``ARCH/path``) and its input resolution; ``extra``: more ``KEY VALUE`` options (last)."""
    modules = plugins.import_plugins()  # registers every trainer
    opts = ["MODEL.BACKBONE.NAME", weights, "INPUT.SIZE", f"({resolution}, {resolution})", "USE_CUDA", str(not cpu)]
    if prec:
        opts += [f"TRAINER.{TRAINER_REGISTRY.get(trainer).CFG_NODE}.PREC", prec]
    opts += [str(value) for value in extra]
    args = train.build_parser().parse_args(["--trainer", trainer, "--dataset-config-file", str(REPO / DATASET_CONFIG),
                                            "--config-file", str(recipe_file(trainer)), *opts])
    return train.setup_cfg(args, modules)


def build_trainer(cfg, classnames):
    """The registered trainer, built by its own ``__init__`` (model, optimiser, scheduler, scaler), with
    ``classnames`` in place of a dataset; never at an epoch's last batch, so a step does no epoch-end work."""
    registered = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)

    class WithoutData(registered):
        def build_data_loader(self):
            self.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=list(classnames)))
            self.num_classes = len(classnames)
            self.lab2cname = dict(enumerate(classnames))

    with contextlib.redirect_stdout(io.StringIO()):  # build notes, not benchmark output
        trainer = WithoutData(cfg)
    trainer.batch_idx, trainer.num_batches = 0, 2
    return trainer


def step_fn(trainer, image, label, reference, mode):
    model = trainer.model
    if mode == "infer":
        def infer():
            with torch.no_grad(), design(model, reference):
                trainer.model_inference(image)
        return infer
    batch = {"img": image, "label": label}

    def train_step():
        with design(model, reference):
            trainer.forward_backward(batch)
    return train_step


# --- measuring ------------------------------------------------------------------------------------------

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


def counted_flops(fn):
    """Floating-point operations of one call (matrix products, convolutions, attention on the math kernel)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def run(args):
    trainers_needed = list(dict.fromkeys(METHODS[m][0] for m in args.methods))
    clip_model = random_clip(args.backbone)
    resolution = clip_model.visual.input_resolution
    rows, device = [], None
    with tempfile.TemporaryDirectory() as folder:
        weights = backbone_name(args.backbone, os.path.join(folder, "clip.pt"))
        torch.save(clip_model.state_dict(), os.path.join(folder, "clip.pt"))
        del clip_model
        cfgs = {t: recipe_cfg(t, weights, resolution, args.cpu, args.prec) for t in trainers_needed}
        for n_cls in args.classes:
            trainers = {t: build_trainer(cfgs[t], class_names(n_cls)) for t in trainers_needed}
            device = next(iter(trainers.values())).device
            for batch in args.batch or [None]:
                inputs = {t: random_batch(batch or cfgs[t].DATALOADER.TRAIN_X.BATCH_SIZE, n_cls, resolution, device)
                          for t in trainers_needed}
                references = {METHODS[m][0] for m in args.methods if METHODS[m][1]}
                for t in trainers_needed:
                    first_run(trainers[t], *inputs[t], check_reference=t in references)
                for mode in args.modes:
                    rows += run_mode(args, trainers, inputs, n_cls, mode, device)
            del trainers
    add_ratios(rows)
    return device, rows


def random_batch(batch, n_cls, resolution, device):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, resolution, resolution, generator=generator)
    return image.to(device), (torch.arange(batch) % n_cls).to(device)


def run_mode(args, trainers, inputs, n_cls, mode, device):
    for trainer in trainers.values():
        trainer.set_model_mode("train" if mode == "train" else "eval")
    steps = [step_fn(trainers[METHODS[m][0]], *inputs[METHODS[m][0]], METHODS[m][1], mode) for m in args.methods]
    flops = [counted_flops(step) if args.flops else None for step in steps]
    rows = []
    for method, (seconds, peak), flop in zip(args.methods, measure(steps, device, args.repeats, args.warmup), flops):
        trainer = METHODS[method][0]
        batch = len(inputs[trainer][1])
        rows.append(dict(backbone=args.backbone, classes=n_cls, batch=batch, method=method, trainer=trainer,
                         reference=reference_name(TRAINERS[trainer]), mode=mode,
                         ms_per_image=1000 * seconds / batch, images_per_s=batch / seconds,
                         peak_mib=None if peak is None else peak / 2 ** 20,
                         gflop_per_image=None if flop is None else flop / batch / 1e9))
        print(f"C={n_cls:<5} B={batch:<3} {mode:<5} {method:<26} {rows[-1]['ms_per_image']:9.1f} ms/img  "
              f"peak {fmt(rows[-1]['peak_mib'], '.0f')} MiB", flush=True)
    return rows


def add_ratios(rows):
    """Time, peak and FLOPs of each row over those of its reference design at the same C, batch and mode
    (None where that reference was not run)."""
    refs = {(r["method"], r["classes"], r["batch"], r["mode"]): r for r in rows}
    for row in rows:
        ref = refs.get((row["reference"], row["classes"], row["batch"], row["mode"]))
        row["ratio_to_reference"] = None if ref is None else row["ms_per_image"] / ref["ms_per_image"]
        row["speedup_vs_reference"] = None if ref is None else row["images_per_s"] / ref["images_per_s"]
        for key, ratio in (("peak_mib", "peak_ratio_to_reference"), ("gflop_per_image", "flop_ratio_to_reference")):
            row[ratio] = row[key] / ref[key] if ref is not None and row[key] is not None and ref[key] else None


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def markdown(rows, machine):
    lines = [f"Machine: {machine}", "",
             "| mode | C | batch | method | ms/img | img/s | time x ref | peak MiB | peak x ref | GFLOP/img "
             "| GFLOP x ref |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['classes']} | {r['batch']} | {r['method']} | {r['ms_per_image']:.1f} | "
                     f"{r['images_per_s']:.2f} | {fmt(r['ratio_to_reference'], '.2f')} | "
                     f"{fmt(r['peak_mib'], '.0f')} | {fmt(r['peak_ratio_to_reference'], '.2f')} | "
                     f"{fmt(r['gflop_per_image'], '.1f')} | {fmt(r['flop_ratio_to_reference'], '.2f')} |")
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
    parser.add_argument("--quick", action="store_true", help="defaults C = 19, 2 repeats")
    parser.add_argument("--backbone", default="vit_b16",
                        help="vit_b16: ViT-B/16 shapes; tiny: the tiny test CLIP's widths (clip/tiny.py) at 12 "
                             "layers; or an open_clip architecture of CLIP's kind (ViT-L-14, ViT-H-14, ...): its "
                             "shapes, GELU or QuickGELU")
    parser.add_argument("--classes", type=int, nargs="+", help="default 19 100 1000")
    parser.add_argument("--batch", type=int, nargs="+", help="images per step, for every method (default: each "
                                                             "trainer's recipe, DATALOADER.TRAIN_X.BATCH_SIZE)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, help="timed runs per configuration (median); default 5")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--flops", action="store_true", help="also count each step's FLOPs (one more run each)")
    parser.add_argument("--prec", choices=["fp16", "fp32", "amp", "bf16"],
                        help="every trainer's PREC (default: its recipe's; fp16 runs as fp32 on the CPU)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default="output/bench", help="folder for bench.json and bench.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = dict(classes=[19], repeats=2)
    full = dict(classes=[19, 100, 1000], repeats=5)
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
