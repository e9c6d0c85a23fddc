"""Answers a user can trust, measured: presence precision/recall with distractor phrases, the 3D answer
against the object's box, and how far the per-view answers of the old 2D path wander.

    python bench/presence.py RUN [RUN ...]            # RUN: an `fmsplat demo --out RUN` folder (data/, scene/)
    python bench/presence.py RUN --method distill --views 6 --relative 0.8
    python bench/presence.py --picture SCENE --phrases fox,computer,chair --view 3 --out answers.jpg

For every run: the labels of its objects.json are the present phrases; DISTRACTORS not in the scene are
the absent ones. Each phrase is answered once in 3D (Locator.locate) and scored:

- presence: found or not, for every k in --ks (the PRESENCE_TOP_K sweep: found = rank <= k), as precision
  and recall over all runs, and the AUROC of the presence score against that of the old confidence (the
  highest per-Gaussian relevancy), which cannot tell absent from present;
- 3D: IoU of the answer's box with the object's box, the point inside the box, and precision/recall of
  the selected Gaussians against the opaque Gaussians in the box (the exported PLY);
- spread: the per-view 2D path lifts each view's argmax through its rendered depth; the distance of those
  points from their mean over the labelled views where the object shows (the 3D-first answer has one
  point per scene: spread 0 by construction).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DISTRACTORS = ("rocket", "astronaut", "pagoda", "flower", "cat", "espresso cup", "motorcycle", "camera tripod",
               "chair", "computer", "car", "teddy bear", "piano", "banana", "sofa", "bicycle", "laptop", "dog",
               "television", "bottle")


def auroc(pos, neg) -> float:
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def box_iou(a_lo, a_hi, b_lo, b_hi) -> float:
    inter = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None).prod()
    union = np.prod(np.asarray(a_hi) - a_lo) + np.prod(np.asarray(b_hi) - b_lo) - inter
    return float(inter / union) if union > 0 else 0.0


def run_one(run: Path, method: str | None, max_views: int, relative: float = 0.8) -> list[dict]:
    import torch

    from fmsplat.query import SceneQuery
    from fmsplat.scene.labels import read_label_dir, read_objects

    data, scene = run / "data", run / "scene"
    objects = {o.label: o for o in read_objects(data / "objects.json")[0]}
    sq = SceneQuery.open(scene, method=method)
    means = sq.field.gaussians.means.detach().double().numpy()
    opaque = (torch.sigmoid(sq.field.gaussians.opacities.detach().float()) >= 0.1).numpy()
    labels = read_label_dir(data)
    by_stem = {Path(c.image_path).stem: i for i, c in enumerate(sq.dataset.cameras)}
    rows = []
    for phrase in list(objects) + [d for d in DISTRACTORS if d not in objects]:
        t0 = time.perf_counter()
        a = sq.locator.locate(phrase, relative=relative)
        ms = 1e3 * (time.perf_counter() - t0)
        part = a.parts[0]
        row = {"run": run.name, "phrase": phrase, "present": phrase in objects, "found": a.found,
               "score": a.presence.score, "rank": a.presence.rank, "max_relevancy": float(a.relevancy.max()),
               "best": [c.name for c in a.presence.concepts[:3]], "ms": ms}
        obj = objects.get(phrase)
        if obj is not None:
            lo, hi = np.asarray(obj.aabb_min), np.asarray(obj.aabb_max)
            inside = ((means >= lo) & (means <= hi)).all(1) & opaque
            sel = np.zeros(len(means), bool)
            sel[part.indices.numpy()] = True
            row.update({"box_iou": box_iou(part.box_min, part.box_max, lo, hi),
                        "point_in_box": bool(((part.point >= lo) & (part.point <= hi)).all()),
                        "sel_precision": float((sel & inside).sum() / max(sel.sum(), 1)),
                        "sel_recall": float((sel & inside).sum() / max(inside.sum(), 1))})
            lifted = []
            for stem, vl in labels.items():
                if phrase in vl.categories() and stem in by_stem and len(lifted) < max_views:
                    r = sq.views.in_view(sq.dataset.cameras[by_stem[stem]], a)
                    if r.point_lifted is not None:
                        lifted.append(r.point_lifted)
            if len(lifted) >= 2:
                p = np.asarray(lifted)
                row["lifted_spread"] = float(np.linalg.norm(p - p.mean(0), axis=1).mean())
                row["object_size"] = float(np.linalg.norm(hi - lo))
        rows.append(row)
    return rows


def picture(scene: Path, phrases: list[str], view: int | None, out: Path, method: str | None) -> None:
    """One row per phrase: its relevancy over the photo (fixed scale) and its 3D answer rendered alone."""
    from PIL import Image

    from fmsplat.query import SceneQuery
    from fmsplat.pictures import colorbar, hstack, relevancy_overlay, resize_map
    from fmsplat.render.rgb import render_image

    sq = SceneQuery.open(scene, method=method)
    view = sq.view_index(view)
    cam, photo = sq.dataset.cameras[view], sq.dataset.image(view)
    rows = []
    for phrase in phrases:
        a = sq.ask(phrase)
        r = sq.in_view(a, view)
        part = render_image(sq.field.gaussians.detach().subset(a.selection.mask), cam, (1.0, 1.0, 1.0))
        state = f"found ({a.presence.score:.2f})" if a.found else f"not found ({a.presence.score:.2f})"
        rows.append(colorbar(hstack([photo, relevancy_overlay(photo, resize_map(r.relevancy, photo.shape[:2])), part],
                                    titles=[sq.bundle.view_name(view), f"'{phrase}': {state}",
                                            f"3D answer alone: {a.selection.count} Gaussians"])))
    width = max(r.shape[1] for r in rows)
    canvas = np.full((sum(r.shape[0] for r in rows) + 4 * (len(rows) - 1), width, 3), 255, np.uint8)
    y = 0
    for r in rows:
        canvas[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0] + 4
    Image.fromarray(canvas).save(out, quality=88)
    print(f"written: {out}")


def main() -> None:
    if "--picture" in sys.argv:
        ap = argparse.ArgumentParser(description="relevancy and 3D answer pictures of phrases on one view")
        ap.add_argument("--picture", type=Path, required=True, metavar="SCENE")
        ap.add_argument("--phrases", required=True)
        ap.add_argument("--view", type=int, default=None)
        ap.add_argument("--method", default=None)
        ap.add_argument("--out", type=Path, required=True)
        a = ap.parse_args()
        picture(a.picture, [p.strip() for p in a.phrases.split(",") if p.strip()], a.view, a.out, a.method)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--method", default=None)
    ap.add_argument("--views", type=int, default=6, help="labelled views per object for the 2D-path spread")
    ap.add_argument("--ks", default="1,3,5,10,20")
    ap.add_argument("--relative", type=float, default=0.8, help="candidate cut of Locator.locate")
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        rows += run_one(run, args.method, args.views, args.relative)
    pos = [r for r in rows if r["present"]]
    neg = [r for r in rows if not r["present"]]
    print(f"{len(args.runs)} runs, {len(pos)} present phrases, {len(neg)} distractors\n")
    print("| k | precision | recall | false alarms |")
    print("|---|---|---|---|")
    for k in [int(v) for v in args.ks.split(",")]:
        tp = sum(r["rank"] <= k for r in pos)
        fp = sum(r["rank"] <= k for r in neg)
        print(f"| {k} | {tp / max(tp + fp, 1):.1%} | {tp / max(len(pos), 1):.1%} | {fp}/{len(neg)} |")
    print(f"\nAUROC present vs absent: presence score {auroc([r['score'] for r in pos], [r['score'] for r in neg]):.3f}, "
          f"highest relevancy (old confidence) {auroc([r['max_relevancy'] for r in pos], [r['max_relevancy'] for r in neg]):.3f}")
    iou = [r["box_iou"] for r in pos]
    print(f"3D: box IoU median {np.median(iou):.2f} (min {min(iou):.2f}); point in box {np.mean([r['point_in_box'] for r in pos]):.0%}; "
          f"selected Gaussians precision {np.mean([r['sel_precision'] for r in pos]):.0%}, recall {np.mean([r['sel_recall'] for r in pos]):.0%}")
    spread = [r["lifted_spread"] / r["object_size"] for r in pos if "lifted_spread" in r]
    if spread:
        print(f"per-view lifted point (old 2D path): mean distance from its mean {np.mean(spread):.2f} object sizes "
              f"(max {max(spread):.2f}); the 3D answer: one point per scene")
    print(f"locate: median {np.median([r['ms'] for r in rows]):.0f} ms per phrase")
    print("\n| run | phrase | present | found | score | rank | best concepts |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["present"] or r["found"]:
            print(f"| {r['run']} | {r['phrase']} | {'yes' if r['present'] else 'no'} | {'yes' if r['found'] else 'no'} | "
                  f"{r['score']:.2f} | {r['rank']} | {', '.join(r['best'])} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
