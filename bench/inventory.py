"""Inventory quality on labelled scenes: what `fmsplat inventory` finds against the true 3D boxes.

    python bench/inventory.py SCENE [SCENE ...] [--method lift] [--clusters 32]

Each SCENE is a trained scene with a fitted field whose dataset has objects.json (the generated rooms:
`fmsplat make-scene`). Per scene: the inventory's objects and background pieces, recall (true objects
whose box holds the point of an inventory object), precision (inventory objects whose point lies in a
true box, or that are marked background), the mean best 3D box IoU per true object, and the time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fmsplat.query import SceneQuery
from fmsplat.scene.labels import read_objects
from fmsplat.workspace import Workspace


def box_iou(a_min, a_max, b_min, b_max) -> float:
    inter = np.prod(np.maximum(0.0, np.minimum(a_max, b_max) - np.maximum(a_min, b_min)))
    union = np.prod(a_max - a_min) + np.prod(b_max - b_min) - inter
    return float(inter / union) if union > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenes", nargs="+")
    ap.add_argument("--method", default=None)
    ap.add_argument("--clusters", type=int, default=32)
    args = ap.parse_args()
    rows = []
    for scene in args.scenes:
        sq = SceneQuery.open(scene, args.method)
        root = Path(Workspace.open(scene).meta["data"]["path"])
        truth = read_objects(root / "objects.json")[0]
        t0 = time.perf_counter()
        inv = sq.inventory(args.clusters)
        seconds = time.perf_counter() - t0
        objs = [o for o in inv.objects if not o.background]

        def inside(p, b):
            return bool(((p >= b.aabb_min) & (p <= b.aabb_max)).all())

        recall = np.mean([any(inside(o.point, b) for o in objs) for b in truth])
        precision = np.mean([o.background or any(inside(o.point, b) for b in truth) for o in inv.objects])
        ious = [max([box_iou(o.box_min, o.box_max, b.aabb_min, b.aabb_max) for o in objs] or [0.0]) for b in truth]
        named = [o.name for b in truth for o in objs if inside(o.point, b)]
        rows.append((Path(scene).name, sq.field.method, len(truth), len(objs), len(inv.objects) - len(objs),
                     recall, precision, float(np.mean(ious)), seconds, ", ".join(dict.fromkeys(named))[:60]))
    print("| scene | field | true objects | inventory objects | background | recall | precision | box IoU | s | names at the true objects |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {100 * r[5]:.0f} % | {100 * r[6]:.0f} % | {r[7]:.2f} | "
              f"{r[8]:.1f} | {r[9]} |")


if __name__ == "__main__":
    main()
