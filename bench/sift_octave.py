"""SIFT's first octave on unposed photos: time per SfM stage and poses against the truth.

    python bench/sift_octave.py /tmp/runs/fox_unposed/data/images /work/shared/data/fox/transforms.json

Runs reconstruct_unposed (exhaustive matching for up to 100 photos) once per first octave into a scratch
folder and compares the posed cameras with the transforms.json poses after the best similarity
(`pose_errors`). The images are the ones `fmsplat process-data` imported (already shrunk to --max-size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from fmsplat.scene.sfm import UnposedSfmConfig, pose_errors, poses_from_transforms, reconstruct_unposed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images")
    parser.add_argument("transforms")
    parser.add_argument("--octaves", type=int, nargs="+", default=[-1, 0])
    args = parser.parse_args()
    import pycolmap

    truth = poses_from_transforms(args.transforms)
    print("| first octave | features | matching | mapping | SfM in all | posed | points | reprojection | rotation "
          "median / max | centre median / max |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for octave in args.octaves:
        with tempfile.TemporaryDirectory() as work:
            t = time.perf_counter()
            rep = reconstruct_unposed(args.images, work, UnposedSfmConfig(first_octave=octave), progress=False)
            wall = time.perf_counter() - t
            rec = pycolmap.Reconstruction(Path(work) / "sparse/0")
            est = {}
            for im in rec.images.values():
                m = np.eye(4)
                m[:3] = im.cam_from_world().matrix()
                est[Path(im.name).stem] = m
        e, sec = pose_errors(est, truth), rep["seconds"]
        print(f"| {octave} | {sec['features']:.1f} s | {sec['matching']:.1f} s | {sec['mapping']:.1f} s | {wall:.1f} s "
              f"| {rep['frames_posed']} of {rep['frames_in']} | {rep['points']:,} | {rep['mean_reprojection_error']:.2f} px "
              f"| {e['rotation_deg_median']:.3f} / {e['rotation_deg_max']:.3f} deg "
              f"| {100 * e['center_error_median']:.2f} / {100 * e['center_error_max']:.2f} % |", flush=True)


if __name__ == "__main__":
    main()
