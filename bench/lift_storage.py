"""Two ways to store a lifted field: PCA latents + linear decoder (what `fit --method lift` writes), or one
index per Gaussian and space into M3's memory bank of that space (the nearest bank entry by cosine).

    python bench/lift_storage.py SCENE          # SCENE with a lift field and M3 banks (SCENE/memory/)

Writes the bank-index field beside the scene (SCENE/../bench-fields/lift-bank-index/, linked caches, as
bench/fields.py) as a full-dimension lift field holding the quantised features, scores both with
`fmsplat eval`, and prints a table: bytes per Gaussian, mean cosine of the quantised per-Gaussian feature
to the lifted one, localisation, mIoU, 3D in-box, 1-cos per space.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", type=Path)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from fields import variant_dir
    from fmsplat.eval import evaluate_scene
    from fmsplat.fields import load_field
    from fmsplat.fields.configs import LiftConfig
    from fmsplat.fields.lift import LiftField
    from fmsplat.fields.memory import read_bank
    from fmsplat.workspace import Workspace

    lifted = load_field(args.scene, "lift")
    work = args.scene.resolve().parent / "bench-fields"
    d = variant_dir(args.scene, work, "lift-bank-index")
    spaces = list(lifted.spaces.values())
    quant = LiftField(lifted.gaussians, spaces, LiftConfig(dim=0))
    rows, agreement, entries = [], {}, {}
    for spec in spaces:
        cached = read_bank(Workspace(args.scene).bank_path(spec.key))
        if cached is None:
            sys.exit(f"{args.scene}: no M3 bank for {spec.alias} in SCENE/memory/ (fit m3 once on this scene)")
        bank = cached[0].raw.float()
        feats = lifted.gaussian_features(spec.alias)
        index = (F.normalize(feats, dim=1) @ F.normalize(bank, dim=1).T).argmax(1)
        q = bank[index]
        agreement[spec.alias] = float(F.cosine_similarity(q, feats, dim=1).mean())
        entries[spec.alias] = len(bank)
        mean = lifted.biases[spec.alias.replace(".", "_")].detach()
        with torch.no_grad():
            quant.weights[spec.alias.replace(".", "_")].copy_(torch.eye(spec.dim))
            quant.biases[spec.alias.replace(".", "_")].copy_(mean)
            quant.features[:, quant._slice(spec.alias)] = q - mean
    quant.summary = {"steps": 0, "bank_index_of": "lift", "bank_entries": entries}
    quant.save(d)
    for name, scene in (("lift (PCA-32 latents + decoder)", args.scene), ("lift, bank index per space", d)):
        s = evaluate_scene(scene, method="lift", out_dir=False, progress=False, panels=False, rgb=False,
                           latency_repeats=0)["summary"]
        fid = {a: (v or {}).get("one_minus_cos") for a, v in (s.get("fidelity") or {}).items()}
        rows.append((name, s, fid))
    bytes_latent = lifted.features.shape[1] * 4
    bytes_index = sum(2 if n <= 65536 else 4 for n in entries.values())
    print(f"scene {args.scene}, {len(lifted.gaussians)} Gaussians; banks {entries}; mean cos(bank entry, lifted "
          f"feature) {json.dumps({a: round(v, 3) for a, v in agreement.items()})}")
    print("| storage | B / Gaussian | loc. acc % | mIoU % | 3D Gauss in-box % | " +
          " | ".join(f"1−cos {a}" for a in rows[0][2]) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(rows[0][2]))
    for (name, s, fid), b in zip(rows, (bytes_latent, bytes_index)):
        print(f"| {name} | {b} | {100 * s['loc_acc']:.1f} | {100 * s['miou']:.1f} | {100 * s['gauss_in_box']:.1f} | "
              + " | ".join(f"{v:.3f}" for v in fid.values()) + " |")


if __name__ == "__main__":
    main()
