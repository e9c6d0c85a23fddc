"""Registrations a user can trust: generated rooms with known poses through `process-data`, against the truth.

    python bench/registration.py --seeds 0 1 2 --views 48 --out /tmp/reg

For each seed: a bench-preset room (photo-textured walls and floor, repeated plank and brick textures, the
8 benchmark objects; by default each object shows the same photo on every face, a duplicate structure as
in the labelled scenes, --distinct-faces gives every face other pixels) with --views views is generated, its photos alone go through process-data (no
poses), and the posed cameras are compared with the generator's after the best similarity (pose_errors):
views within 5 deg and 5 % of the path's diameter, and whether the views the report does not trust
(report.json's sfm.trust "untrusted", from repeat solves) are the wrong ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmsplat.scene.capture import process_data  # noqa: E402
from fmsplat.scene.sfm import pose_errors, poses_from_colmap, poses_from_transforms  # noqa: E402
from fmsplat.scene.synthetic.writer import make_scene  # noqa: E402

ROT_OK, CENTRE_OK = 5.0, 0.05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--views", type=int, default=48)
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--distinct-faces", action="store_true",
                    help="every face of an object shows other pixels (SceneConfig.distinct_faces): no duplicate "
                         "structure, only the repeated wall and floor textures")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    print("| seed | views | posed | within 5 deg / 5 % | wrong (posed, outside) | not trusted by the report | "
          "of those wrong | rotation median | time |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed in args.seeds:
        room = args.out / f"room{seed}"
        if not room.exists():
            make_scene(room, preset=args.preset, seed=seed, n_views=args.views, distinct_faces=args.distinct_faces)
        posed_dir = args.out / f"posed{seed}"
        shutil.rmtree(posed_dir, ignore_errors=True)
        t = time.perf_counter()
        report = process_data(room / "images", posed_dir, progress=False)
        seconds = time.perf_counter() - t
        truth = poses_from_transforms(room / "transforms.json")
        est = poses_from_colmap(posed_dir / "sparse" / "0")
        err = pose_errors(est, truth)
        wrong = sorted(k for k, v in err["per_view"].items()
                       if v["rotation_deg"] > ROT_OK or v["center_error"] > CENTRE_OK)
        trust = report["sfm"].get("trust") or {}
        flagged = sorted(Path(n).stem for n in trust.get("untrusted", []))
        ok = err["views"] - len(wrong)
        print(f"| {seed} | {args.views} | {report['frames_posed']} | {ok} ({100 * ok / args.views:.0f} %) | "
              f"{len(wrong)} | {len(flagged)} | {len(set(flagged) & set(wrong))} | "
              f"{err['rotation_deg_median']:.2f} deg | {seconds:.0f} s |", flush=True)
        (args.out / f"seed{seed}.json").write_text(json.dumps({"wrong": wrong, "flagged": flagged,
                                                               "trust": trust, "seconds": report["seconds"],
                                                               "mapper": report["sfm"].get("mapper")}, indent=1))


if __name__ == "__main__":
    main()
