"""How whole is the object an edit takes? Selection precision and recall against the true boxes.

    python bench/selection.py SCENE [SCENE ...] [--method lift]

Each SCENE is a trained scene with a fitted field whose dataset has objects.json (the generated rooms:
`fmsplat make-scene`). For every true object, its label is asked (`SceneQuery.ask`) and the selection is
taken four ways: the answer's Gaussians; grown by hysteresis (Locator.grow, growth across background
planes allowed); the same plus the inventory objects (Inventory.grow) — the edits' rule before planes;
and `SceneQuery.whole_object` (no growth across background planes, the faint Gaussians attached).
Recall: share of the Gaussians whose centre lies in the object's box (opacity >= 0.1, or all Gaussians
for the last column) that are selected; precision: share of the selected inside the box. Objects not
found are counted as they come (a wrong place gives precision 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fmsplat.query import SceneQuery
from fmsplat.scene.labels import read_objects
from fmsplat.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenes", nargs="+")
    ap.add_argument("--method", default=None)
    args = ap.parse_args()
    print("| scene | object | answer P / R | hysteresis P / R | + inventory P / R | whole_object P / R (opaque) | whole_object P / R (all) |")
    print("|---|---|---|---|---|---|---|")
    for scene in args.scenes:
        sq = SceneQuery.open(scene, args.method)
        truth = read_objects(Path(Workspace.open(scene).meta["data"]["path"]) / "objects.json")[0]
        means = sq.field.gaussians.means.detach().double().numpy()
        opaque = torch.sigmoid(sq.field.gaussians.opacities.detach()).numpy() >= 0.1
        sums = {k: [] for k in range(5)}
        for b in truth:
            inside = ((means >= b.aabb_min) & (means <= b.aabb_max)).all(1)
            a = sq.ask(b.label)
            hyst = sq.locator.grow(a, planes=False)
            masks = [a.selection.mask, hyst, sq.inventory().grow(hyst), sq.whole_object(a)]
            cells = []
            for k, m in enumerate(masks + [masks[-1]]):
                m = m.numpy() & (opaque if k < 4 else True)
                ref = inside & (opaque if k < 4 else True)
                p = float((m & inside).sum() / max(m.sum(), 1))
                r = float((m & ref).sum() / max(ref.sum(), 1))
                sums[k].append((p, r))
                cells.append(f"{p:.2f} / {r:.2f}")
            print(f"| {Path(scene).name} | {b.label} | " + " | ".join(cells) + " |")
        means_pr = [np.mean(v, axis=0) for v in sums.values()]
        print(f"| {Path(scene).name} | mean | " + " | ".join(f"{p:.2f} / {r:.2f}" for p, r in means_pr) + " |")


if __name__ == "__main__":
    main()
