"""Query latency: one relevancy map for one text query on a trained scene, per fitted field.

    python bench/query.py SCENE [SCENE ...]           # every field in each SCENE/fields/, 256x256, 20 repeats
    python bench/query.py SCENE --size 512 --repeats 10 --methods fmgs,m3

Several scenes (e.g. the variant folders of bench/fields.py, which share one dataset) are timed in one
run, against one teacher row (the first scene's view and language space).

For each fitted method, the first held-out view's camera is resized to SIZE x SIZE and timed (median
of --repeats, after one warm-up call): `render` (the field's language space through the rasterizer,
decoded to the model's full dimension), `relevancy` (LERF relevancy of that map against the canonical
negatives, text embedding cached as in any interactive session), and `map`, what a query costs: the
engine's one-step path (ViewQuery.relevancy_map, through FeatureField.render_text_dots, which
skips the decoding where the field allows it). `text` is the
one-off cost of embedding a new query (median over distinct phrases, nothing cached). The `teacher`
row runs the 2D extractor on the photo resized to SIZE x SIZE and computes the same relevancy on its
upsampled map (fmsplat.query.relevancy.relevancy_upsampled, as `fmsplat eval` scores it): the cost a method without a 3D field pays for every new view. `x teacher` is the
teacher's map time over the method's (higher: the 3D field answers faster). All rows are measured in
one run, so their ratios hold even when the machine is busy; absolute times move with the load.
`3D ms` is a 3D answer with no view (Locator.locate: per-Gaussian relevancy, the connected part,
its box and Gaussians; median, features cached as in a session), `3D first ms` the first one, which
computes every Gaussian's feature once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: kernels, allocations
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenes", type=Path, nargs="+", help="trained scene directories with fitted fields")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: every fitted one)")
    ap.add_argument("--size", type=int, default=256, help="render size: SIZE x SIZE pixels")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()

    import torch
    from fmsplat.fields import load_field
    from fmsplat.workspace import Workspace
    from fmsplat.query import Locator, QueryCore, ViewQuery
    from fmsplat.query.relevancy import relevancy_upsampled
    from fmsplat.foundation.base import resize, to_bchw

    if args.threads:
        torch.set_num_threads(args.threads)
    size = (args.size, args.size)
    text = "espresso cup"
    phrases = ["a red chair", "kitchen sink", "wooden table", "yellow duck", "green plant", "blue mug"]
    header = (f"{'scene / method':34} {'space':8} {'render ms':>10} {'relevancy ms':>13} {'map ms':>8} {'text ms':>8} "
              f"{'x teacher':>10} {'3D ms':>8} {'3D first ms':>12}")
    rows = []
    teacher_ms = None
    for scene in args.scenes:
        fields_dir = scene / "fields"
        methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else
                   sorted(p.name for p in fields_dir.iterdir() if (p / "field.json").is_file()) if fields_dir.is_dir() else [])
        if not methods:
            sys.exit(f"{scene}: no fitted fields (fmsplat fit {scene} --method ...)")
        bundle = Workspace.open(scene)
        data = bundle.dataset
        view = (data.test_indices or data.train_indices)[0]
        camera = data.cameras[view].resized(args.size, args.size)
        if teacher_ms is None:
            print(f"view {bundle.view_name(view)}, {args.size}x{args.size}, {len(bundle.gaussians)} Gaussians, "
                  f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
        for method in methods:
            field_ = load_field(scene, method, bundle=bundle)
            core = QueryCore(field_)
            views, locator = ViewQuery(core), Locator(core)
            emb, neg = core.embed([text]), core.negative_embeddings
            # render + relevancy as two steps (full feature map), then the one-step path
            render = views.render(camera, size)
            render_ms = _median_ms(lambda: views.render(camera, size), args.repeats)
            rel_ms = _median_ms(lambda: views.relevancy_maps(render, [text]), args.repeats)
            map_ms = _median_ms(lambda: views.relevancy_map(camera, text, size), args.repeats)

            def embed_new(i=[0]):
                core.text_cache.clear()
                core.embed([phrases[i[0] % len(phrases)]])
                i[0] += 1

            text_ms = _median_ms(embed_new, min(args.repeats, 2 * len(phrases)))
            # a 3D answer (Locator.locate, no view): the first pays the per-Gaussian features once
            locator.reset()
            t = time.perf_counter()
            locator.locate(text)
            first_3d_ms = 1e3 * (time.perf_counter() - t)
            locate_ms = _median_ms(lambda: locator.locate(text), args.repeats)
            if teacher_ms is None:
                extractor = core.spec.extractor()
                image = resize(to_bchw(data.image(view)), (args.size, args.size))

                def teacher_map():
                    feats = extractor.encode_images(image)[0].float()
                    return relevancy_upsampled(feats, (args.size, args.size), emb[0], neg)

                teacher_ms = _median_ms(teacher_map, args.repeats)
                rows.append(("teacher (2D)", core.space, None, None, teacher_ms, None, None, None))
            name = f"{scene.name}/{method}" if len(args.scenes) > 1 else method
            rows.append((name, core.space, render_ms, rel_ms, map_ms, text_ms, locate_ms, first_3d_ms))
    print(header)
    print("-" * len(header))
    for name, space, r_ms, l_ms, m_ms, t_ms, g_ms, f_ms in rows:
        fmt = lambda v: f"{v:.1f}" if v is not None else "–"  # noqa: E731
        ratio = f"{teacher_ms / m_ms:.1f}" if name != "teacher (2D)" else "1.0"
        print(f"{name:34} {space:8} {fmt(r_ms):>10} {fmt(l_ms):>13} {fmt(m_ms):>8} {fmt(t_ms):>8} {ratio:>10} "
              f"{fmt(g_ms):>8} {fmt(f_ms):>12}")


if __name__ == "__main__":
    main()
