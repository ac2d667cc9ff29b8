"""Text-encoder time per image with image-conditioned prompts: CLIP's 77-token tower vs clip.prompting.

    python -m tools.bench_text_encoder            # ViT-B/16 text tower, C = 19, 100, 1000
    python -m tools.bench_text_encoder --quick    # C = 19 and 100, one timed run each
    python -m tools.bench_text_encoder --quick --backbone tiny   # the tiny test CLIP: seconds

CoCoOp and MuPL condition the context on the image, so every class prompt is re-encoded for every image:
C prompts through the text tower per image. The reference runs them at CLIP's full 77 tokens, one image at
a time, as CoCoOp's repository does. ``clip.prompting.TextEncoder`` takes all B x C prompts in one call and
cuts every position after the longest EOT (the tower is causal and the feature is read at EOT); its
``encode_shared_prefix``, the path the trainers use, also runs each image's ``[SOS] ctx``, the same in all
C prompts, once. Outputs are checked equal before timing. Random weights, forward pass only (inference; a
training step adds a backward pass that scales the same way). Results: docs/performance.md.
"""
import argparse

import torch

from clip.prompting import ClassPrompts, TextEncoder
from tools.bench import build_clip, class_names, machine_name, measure, reference_text

N_CTX, CTX_INIT = 4, "a photo of a"


@torch.no_grad()
def bench(clip_model, n_cls, batch, device, repeats, warmup):
    prompts_of = ClassPrompts(clip_model, class_names(n_cls), N_CTX, CTX_INIT).to(device)
    ctx = prompts_of.ctx_init_vectors().to(device)
    ctx = ctx + 0.02 * torch.randn(batch, N_CTX, ctx.shape[-1], device=device)
    prompts = prompts_of.assemble(ctx, batched=True)  # (B, C, 77, D): the image-conditioned prompts
    eot = prompts_of.eot.expand(batch, -1)
    encoder = TextEncoder(clip_model)
    paths = [
        lambda: reference_text(clip_model, prompts, prompts_of.eot),
        lambda: encoder(prompts, eot),
        lambda: encoder.encode_shared_prefix(prompts_of.shared_prefix(ctx), prompts_of.token_suffix, prompts_of.eot),
    ]
    expected = paths[0]()
    for path in paths[1:]:
        if not torch.allclose(path(), expected, atol=1e-4 * expected.abs().max().item()):
            raise AssertionError(f"fast and 77-token text features disagree at C={n_cls}")
    ref_ms, truncated_ms, shared_ms = (1000 * seconds / batch for seconds, _ in measure(paths, device, repeats, warmup))
    return dict(classes=n_cls, tokens=int(prompts_of.eot.max()) + 1, ref_ms=ref_ms, truncated_ms=truncated_ms,
                shared_ms=shared_ms, speedup=ref_ms / shared_ms)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="defaults C = 19 and 100, one timed run")
    parser.add_argument("--backbone", default="vit_b16", choices=["vit_b16", "tiny"],
                        help="ViT-B/16 shapes, or the tiny test CLIP of clip/tiny.py")
    parser.add_argument("--classes", type=int, nargs="+", help="default 19 100 1000")
    parser.add_argument("--batch", type=int, default=1, help="images per step (CoCoOp trains with 1)")
    parser.add_argument("--repeats", type=int, help="timed runs (median); default 3")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU (fp32 on both)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.classes is None:
        args.classes = [19, 100] if args.quick else [19, 100, 1000]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    clip_model = build_clip(args.backbone, "fp32").to(device)
    print(f"Machine: {machine_name(device)}, torch {torch.__version__}, batch {args.batch}\n")
    print("| C | tokens run (fast) | 77-token reference ms/img | truncated batched ms/img | "
          "+ shared prefix ms/img | speedup |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n_cls in args.classes:
        r = bench(clip_model, n_cls, args.batch, device, args.repeats, args.warmup)
        print(f"| {r['classes']} | {r['tokens']} | {r['ref_ms']:.1f} | {r['truncated_ms']:.1f} | "
              f"{r['shared_ms']:.1f} | {r['speedup']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
