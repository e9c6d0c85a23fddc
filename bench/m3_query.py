"""M3 at query time: how each way of attending keeps the relevancy maps, and what a map costs.

    python bench/m3_query.py SCENE [--size 256] [--repeats 5]

SCENE holds a fitted M3 field (fields/m3). For every labelled view and each category in it (at most --views
views; the label size, as `fmsplat eval`), the relevancy map is computed with the exact per-pixel
attention (query_scale 1, query_rank 0, query_top_k 0) and with each alternative below; a row gives the
median time of one SIZE x SIZE map on the first labelled view, and against the exact maps: the mean absolute relevancy
difference, the Pearson correlation, and `loc %` (LERF localisation: the argmax pixel in a box of the
category) and `agree %` (queries where that hit or miss is the exact map's). The distill
field's map time, if SCENE/../distill or SCENE/fields/distill exists, is the `x distill` reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from query import _median_ms  # noqa: E402  (bench/query.py, beside this script)

OPTIONS = [  # (name, overrides of M3Config)
    ("exact: every pixel attends over the whole bank", dict(query_scale=1.0, query_rank=0, query_top_k=0)),
    ("norms through the bank's top-64 directions", dict(query_scale=1.0, query_rank=64, query_top_k=0)),
    ("top-32 entries per pixel", dict(query_scale=1.0, query_rank=0, query_top_k=32)),
    ("attention at 1/2 resolution", dict(query_scale=0.5, query_rank=0, query_top_k=0)),
    ("attention at 1/4 resolution", dict(query_scale=0.25, query_rank=0, query_top_k=0)),
    ("1/4 resolution + top-64 norms (default)", dict(query_scale=0.25, query_rank=64, query_top_k=0)),
    ("1/8 resolution + top-64 norms", dict(query_scale=0.125, query_rank=64, query_top_k=0)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", type=Path)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--views", type=int, default=9)
    args = ap.parse_args()

    import dataclasses

    import numpy as np
    import torch
    from fmsplat.fields import load_field
    from fmsplat.workspace import Workspace
    from fmsplat.query import QueryCore, ViewQuery

    bundle = Workspace.open(args.scene)
    data = bundle.dataset
    field_ = load_field(args.scene, "m3", bundle=bundle)
    size = (args.size, args.size)
    from fmsplat.eval.protocol import _view_index, dataset_dir
    from fmsplat.scene.labels import read_label_dir

    index = _view_index(bundle)
    queries = []  # (camera at the label size, category, its boxes)
    for stem, vl in list(read_label_dir(dataset_dir(bundle)).items())[: args.views]:
        cam = data.cameras[index[stem]].resized(vl.width, vl.height)
        queries += [(cam, c, vl.boxes(c)) for c in vl.categories()]
    first = data.cameras[index[next(iter(read_label_dir(dataset_dir(bundle))))]].resized(*size)
    base = field_.config

    def maps_with(overrides):
        field_.config = dataclasses.replace(base, **overrides)
        views = ViewQuery(QueryCore(field_))
        out = [views.relevancy_map(cam, t).float() for cam, t, _ in queries]
        ms = _median_ms(lambda: views.relevancy_map(first, queries[0][1], size), args.repeats)
        return out, ms

    def in_box(rel, boxes):
        y, x = np.unravel_index(int(torch.argmax(rel)), rel.shape)
        return bool(((boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])).any())

    distill_ms = None
    for cand in (args.scene / "fields" / "distill", args.scene.parent / "distill" / "fields" / "distill"):
        if (cand / "field.json").is_file():
            d = load_field(cand.parent.parent, "distill", bundle=bundle)
            e = ViewQuery(QueryCore(d))
            distill_ms = _median_ms(lambda: e.relevancy_map(first, queries[0][1], size), args.repeats)
            break
    print(f"{args.scene}: {len(bundle.gaussians)} Gaussians, bank {len(field_.bank(field_.language_space))} entries, "
          f"{len(queries)} queries, {args.size}x{args.size}, torch threads {torch.get_num_threads()}"
          + (f", distill map {distill_ms:.0f} ms" if distill_ms else ""))
    head = f"{'option':48} {'map ms':>8} {'x distill':>9} {'mean |Δrel|':>12} {'corr':>6} {'loc %':>6} {'agree %':>8}"
    print(head + "\n" + "-" * len(head))
    exact = None
    for name, overrides in OPTIONS:
        maps, ms = maps_with(overrides)
        if exact is None:
            exact = maps
        diff = statistics.mean(float((m - e).abs().mean()) for m, e in zip(maps, exact))
        corr = statistics.mean(float(np.corrcoef(m.flatten().numpy(), e.flatten().numpy())[0, 1]) for m, e in zip(maps, exact))
        hits = [in_box(m, q[2]) for m, q in zip(maps, queries)]
        ref = [in_box(e, q[2]) for e, q in zip(exact, queries)]
        loc = f"{100 * statistics.mean(hits):.1f}"
        agree = f"{100 * statistics.mean(h == r for h, r in zip(hits, ref)):.1f}"
        ratio = f"{ms / distill_ms:.1f}" if distill_ms else "–"
        print(f"{name:48} {ms:8.0f} {ratio:>9} {diff:12.4f} {corr:6.3f} {loc:>6} {agree:>8}", flush=True)
    field_.config = base


if __name__ == "__main__":
    main()
