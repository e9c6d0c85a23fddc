"""Throughput and peak memory of the feature extractors on this machine.

    /work/venv/bin/python bench/extract.py            # all cases, one subprocess each
    /work/venv/bin/python bench/extract.py --quick    # embedded default only

Each case runs in its own process so that its peak resident memory (VmHWM) is its own. The
embedded default uses its real weights; the transformers models (CLIP ViT-B/16, DINO ViT-S/8) are
built from their published architectures with random weights: timings only, no semantics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = [
    # name, extractor, image height, image width, batch
    ("effnet", "effnet", 256, 256, 1),
    ("effnet", "effnet", 512, 512, 1),
    ("effnet", "effnet", 256, 256, 8),
    ("effnet-mid s16", "effnet-mid", 256, 256, 1),
    ("effnet-mid s16", "effnet-mid", 512, 512, 1),
    ("effnet-mid s8", "effnet-mid:8", 512, 512, 1),
    ("CLIP ViT-B/16 dense (random w.)", "clip-b16", 224, 224, 1),
    ("CLIP ViT-B/16 dense (random w.)", "clip-b16", 448, 448, 1),
    ("CLIP ViT-B/16 maskclip (random w.)", "clip-b16-maskclip", 448, 448, 1),
    ("DINO ViT-S/8 keys (random w.)", "dino-s8", 224, 224, 1),
    ("DINO ViT-S/8 keys (random w.)", "dino-s8", 448, 448, 1),
    ("FMGS pyramid over effnet", "pyramid-effnet", 240, 135, 1),
]
QUICK = {"effnet", "effnet-mid", "effnet-mid:8"}


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak counts only what follows
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def build(kind: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fmsplat.foundation import get_extractor

    if kind == "effnet":
        return get_extractor("effnet")
    if kind == "effnet-mid":
        return get_extractor("effnet-mid", stride=16)
    if kind == "effnet-mid:8":
        return get_extractor("effnet-mid", stride=8)
    if kind == "pyramid-effnet":
        return get_extractor("effnet", pyramid=True)
    import torch
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    from fmsplat.foundation.hf import ClipExtractor, DinoExtractor

    torch.manual_seed(0)
    if kind.startswith("clip-b16"):
        cfg = CLIPConfig(
            vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               image_size=224, patch_size=16),
            projection_dim=512,
        )
        mode = "maskclip" if kind.endswith("maskclip") else "proj"
        return ClipExtractor(CLIPModel(cfg), name="clip-vit-b16-random", mode=mode, device="cpu")
    if kind == "dino-s8":
        cfg = ViTConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                        image_size=224, patch_size=8)
        return DinoExtractor(ViTModel(cfg, add_pooling_layer=False), name="dino-vits8-random", device="cpu")
    raise ValueError(kind)


def run_one(kind: str, height: int, width: int, batch: int, min_seconds: float, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    extractor = build(kind)
    if hasattr(extractor, "progress"):
        extractor.progress = False
    images = torch.rand(batch, 3, height, width)
    baseline = _peak_rss_mb()
    extractor.encode_images(images)  # warm-up (allocator, lazy init)
    _reset_peak()
    before = _peak_rss_mb()
    runs, start = 0, time.perf_counter()
    while True:
        out = extractor.encode_images(images)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return {
        "images_per_s": runs * batch / elapsed,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_load_mb": baseline,
        "extra_peak_mb": _peak_rss_mb() - before,
        "out_shape": list(out.shape[1:]),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="embedded extractors only")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each case for at least this long")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per case (0: torch's default)")
    ap.add_argument("--one", nargs=4, metavar=("KIND", "H", "W", "B"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        kind, h, w, b = args.one
        print(json.dumps(run_one(kind, int(h), int(w), int(b), args.min_seconds, args.threads)))
        return
    cases = [c for c in CASES if not args.quick or c[1] in QUICK]
    print(f"{'extractor':36} {'input':>9} {'batch':>5} {'img/s':>8} {'peak RSS MB':>11} {'+MB run':>8}  output (D, h, w)")
    for label, kind, h, w, b in cases:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", kind, str(h), str(w), str(b), "--min-seconds", str(args.min_seconds),
             "--threads", str(args.threads)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"case {label} {h}x{w} failed:\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{label:36} {f'{h}x{w}':>9} {b:>5} {r['images_per_s']:>8.2f} {r['peak_rss_mb']:>11.0f} "
              f"{r['extra_peak_mb']:>8.0f}  {tuple(r['out_shape'])}")
    print(f"(torch threads: {r['threads']}; CPU count: {os.cpu_count()})")


if __name__ == "__main__":
    main()
