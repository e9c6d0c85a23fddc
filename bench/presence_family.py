"""The presence rule on a family of rooms it was never tuned on (issue 27, item 2).

    python bench/presence_family.py --rooms 24 --out /tmp/family          # build, train, lift, score (resumable)
    python bench/presence_family.py --rooms 24 --out /tmp/family --report  # the tables only, from the rows

Each room is the bench preset (9x9 m, 320x240, photo-textured walls and floor) with --objects objects drawn
(seeded by the room) from the calibration pool (fmsplat.scene.synthetic.textures.CALIBRATION_PHOTOS:
OpenCV's sample photos, `apt-get install opencv-doc`), a pool that neither the tests nor the bench room
use. Every room is trained (`fmsplat train`, --steps/--max-gaussians below) and lifted (`fmsplat fit`, the
default), then every phrase is answered once in 3D (bench/presence.py's run_one): the room's object labels
are the present phrases, the pool's other labels and GENERIC everyday words the absent ones.

Reported: the PRESENCE_TOP_K sweep over all rooms (precision, recall), the AUROC of the presence score, the
k chosen leave-one-room-out (best F1 on the other rooms) with the held-out precision and recall it gives,
the reliability of the score (of the answers scored in a bin, how many are present), and per room.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GENERIC = ("chair", "computer", "teddy bear", "piano", "banana", "sofa", "bicycle", "laptop", "television",
           "bottle", "umbrella", "guitar")


def build(room: Path, seed: int, n_objects: int, views: int, steps: int, max_gaussians: int) -> dict:
    from fmsplat.scene.synthetic import make_scene
    from fmsplat.scene.synthetic.textures import CALIBRATION_PHOTOS

    rng = np.random.default_rng([seed, 27])
    objects = [str(o) for o in rng.choice(sorted(CALIBRATION_PHOTOS), n_objects, replace=False)]
    seconds = {}
    t = time.perf_counter()
    if not (room / "data" / "transforms.json").is_file():
        make_scene(room / "data", preset="bench", seed=seed, n_views=views, objects=objects, overwrite=True)
    seconds["make"] = time.perf_counter() - t
    for stage, cmd in (("train", ["train", str(room / "data"), "--out", str(room / "scene"), "--steps", str(steps),
                                  "--max-gaussians", str(max_gaussians)]),
                       ("fit", ["fit", str(room / "scene")])):
        t = time.perf_counter()
        done = room / "scene" / ("metrics.json" if stage == "train" else "fields/lift")
        if not done.exists():
            subprocess.run([str(Path(sys.executable).with_name("fmsplat")), *cmd], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        seconds[stage] = time.perf_counter() - t
    metrics = json.loads((room / "scene" / "metrics.json").read_text())
    return {"objects": objects, "seconds": seconds, "psnr": metrics["test"]["psnr"]}


def evaluate(room: Path) -> dict:
    """`fmsplat eval` of the room's lifted field on its labelled views: localisation, mIoU of the map mask and
    of the 3D mask (SCENE/eval/lift/eval.json, written once)."""
    out = room / "scene" / "eval" / "lift" / "eval.json"
    if not out.is_file():
        subprocess.run([str(Path(sys.executable).with_name("fmsplat")), "eval", str(room / "scene"), "--data",
                        str(room / "data"), "--no-panels", "--latency-repeats", "0"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads(out.read_text())["summary"]
    return {k: summary[k] for k in ("loc_acc", "miou", "miou_3d", "found")}


def score(room: Path) -> list[dict]:
    import presence as bench_presence

    from fmsplat.scene.synthetic.textures import CALIBRATION_PHOTOS

    bench_presence.DISTRACTORS = tuple(sorted(CALIBRATION_PHOTOS)) + GENERIC
    return bench_presence.run_one(room, None, 0)


def pr(rows, k) -> tuple[float, float, int, int]:
    tp = sum(1 for r in rows if r["present"] and r["rank"] <= k)
    fp = sum(1 for r in rows if not r["present"] and r["rank"] <= k)
    pos = sum(1 for r in rows if r["present"])
    return (tp / (tp + fp) if tp + fp else float("nan")), (tp / pos if pos else float("nan")), tp, fp


def f1(p, r) -> float:
    return 0.0 if not (p + r) or np.isnan(p) else 2 * p * r / (p + r)


def report(rooms: list[dict], ks=(1, 2, 3, 5, 8, 10, 15, 20, 30, 50)) -> None:
    from presence import auroc

    rows = [r for room in rooms for r in room["rows"]]
    pos, neg = [r for r in rows if r["present"]], [r for r in rows if not r["present"]]
    print(f"{len(rooms)} rooms, {len(pos)} present and {len(neg)} absent phrases; "
          f"held-out PSNR {np.median([r['psnr'] for r in rooms]):.2f} dB median\n")
    print("| k (PRESENCE_TOP_K) | precision | recall | false alarms |\n|---:|---:|---:|---:|")
    for k in ks:
        p, r, tp, fp = pr(rows, k)
        print(f"| {k} | {100 * p:.1f} % | {100 * r:.1f} % ({tp} of {len(pos)}) | {fp} of {len(neg)} |")
    print(f"\nAUROC of the presence score: {auroc([r['score'] for r in pos], [r['score'] for r in neg]):.3f}; "
          f"of the rank (lower is present): {auroc([-r['rank'] for r in pos], [-r['rank'] for r in neg]):.3f}")
    # leave one room out: k by best F1 on the others, scored on the room left out
    chosen, held = [], []
    for i, room in enumerate(rooms):
        others = [r for j, o in enumerate(rooms) if j != i for r in o["rows"]]
        k = max(range(1, 51), key=lambda k: f1(*pr(others, k)[:2]))
        chosen.append(k)
        held += [dict(r, found_cv=r["rank"] <= k) for r in room["rows"]]
    tp = sum(r["present"] and r["found_cv"] for r in held)
    fp = sum((not r["present"]) and r["found_cv"] for r in held)
    print(f"\nleave-one-room-out k (best F1 on the other rooms): {sorted(set(chosen))} (most often "
          f"{max(set(chosen), key=chosen.count)}); held-out precision {100 * tp / max(tp + fp, 1):.1f} %, "
          f"recall {100 * tp / len(pos):.1f} %")
    asked: dict[str, list[int]] = {}
    for r in neg:
        asked.setdefault(r["phrase"], [0, 0])
        asked[r["phrase"]][0] += 1
        asked[r["phrase"]][1] += r["rank"] <= 5
    worst = sorted(asked.items(), key=lambda kv: -kv[1][1])
    print("\nfalse alarms at k=5 by absent phrase: " + ", ".join(f"{k} {v[1]} of {v[0]}" for k, v in worst if v[1]))
    missed: dict[str, list[int]] = {}
    for r in pos:
        missed.setdefault(r["phrase"], [0, 0])
        missed[r["phrase"]][0] += 1
        missed[r["phrase"]][1] += r["rank"] <= 5
    print("found at k=5 by present object: " + ", ".join(f"{k} {v[1]} of {v[0]}" for k, v in
                                                          sorted(missed.items(), key=lambda kv: -kv[1][1] / kv[1][0])))
    print("\n| score bin | answers | present among them |\n|---|---:|---:|")
    edges = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.01]
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = [r for r in rows if lo <= r["score"] < hi]
        print(f"| {lo:.1f}–{min(hi, 1):.1f} | {len(b)} | "
              f"{100 * np.mean([r['present'] for r in b]):.1f} % |" if b else f"| {lo:.1f}–{min(hi, 1):.1f} | 0 | – |")
    evals = [room["eval"] for room in rooms if "eval" in room]
    if evals:
        print(f"\nfmsplat eval over {len(evals)} rooms (mean of the per-room figures): localisation "
              f"{100 * np.mean([e['loc_acc'] for e in evals]):.1f} %, mIoU map mask "
              f"{100 * np.mean([e['miou'] for e in evals]):.1f} %, 3D mask {100 * np.mean([e['miou_3d'] for e in evals]):.1f} %")
    inbox = [r["point_in_box"] for r in pos if "point_in_box" in r]
    print(f"\n3D answer's point inside the object's box: {sum(inbox)} of {len(inbox)} present phrases "
          f"({100 * np.mean(inbox):.1f} %)")
    print("\n| room | objects | PSNR | loc. / mIoU map / 3D mask | 3D point in box | found (k=5) | false alarms | "
          "missed: best readings there |\n|---:|---|---:|---|---:|---:|---|---|")
    for i, room in enumerate(rooms):
        p_rows = [r for r in room["rows"] if r["present"]]
        fa = [r["phrase"] for r in room["rows"] if not r["present"] and r["found"]]
        missed = "; ".join(f"{r['phrase']}: {', '.join(r['best'])}" for r in p_rows if not r["found"])
        e = room.get("eval")
        ev = f"{100 * e['loc_acc']:.0f} / {100 * e['miou']:.0f} / {100 * e['miou_3d']:.0f} %" if e else "–"
        print(f"| {i} | {', '.join(room['objects'])} | {room['psnr']:.1f} | {ev} | "
              f"{sum(r.get('point_in_box', False) for r in p_rows)} of {len(p_rows)} | {sum(r['found'] for r in p_rows)} of "
              f"{len(p_rows)} | {', '.join(fa) or 0} | {missed} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rooms", type=int, default=24)
    ap.add_argument("--first", type=int, default=0, help="seed of the first room")
    ap.add_argument("--objects", type=int, default=5)
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--steps", type=int, default=600, help="3DGS steps a room (fmsplat train's default: 1000)")
    ap.add_argument("--max-gaussians", type=int, default=30000, help="(the default at 320x240: 100,000)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", action="store_true", help="only the tables, from the rooms already scored")
    ap.add_argument("--eval", action="store_true", help="also `fmsplat eval` every room (localisation, mIoU)")
    args = ap.parse_args()
    rooms = []
    for seed in range(args.first, args.first + args.rooms):
        room = args.out / f"room{seed:02d}"
        rows_file = room / "rows.json"
        if rows_file.is_file():
            rooms.append(json.loads(rows_file.read_text()))
            continue
        if args.report:
            continue
        info = build(room, seed, args.objects, args.views, args.steps, args.max_gaussians)
        t = time.perf_counter()
        info["rows"] = score(room)
        info["seconds"]["score"] = time.perf_counter() - t
        rows_file.write_text(json.dumps(info, indent=1))
        rooms.append(info)
        found = sum(r["found"] for r in info["rows"] if r["present"])
        fa = sum(r["found"] for r in info["rows"] if not r["present"])
        print(f"room {seed}: {', '.join(info['objects'])}: {info['psnr']:.1f} dB, found {found} of {args.objects}, "
              f"{fa} false alarms; " + ", ".join(f"{k} {v:.0f} s" for k, v in info["seconds"].items()), flush=True)
    if args.eval:
        for seed, room in zip(range(args.first, args.first + args.rooms), rooms):
            room.setdefault("eval", evaluate(args.out / f"room{seed:02d}"))
            (args.out / f"room{seed:02d}" / "rows.json").write_text(json.dumps(room, indent=1))
    if rooms:
        report(rooms)


if __name__ == "__main__":
    main()
