"""M3's projection W: how close memory attention can get to a held-out view's features at a given query
dimension, through a random W (official) or the bank's principal directions (projection_init=pca), against
the linear decoder that plain distillation uses at the same dimension.

    python bench/m3_projection.py SCENE [--model effnet] [--dim 16] [--steps 200]

SCENE is a trained scene with its feature cache (as `fmsplat fit` leaves it). The bank is the M3 bank of
--model over the training views (Algorithm 1, the cpu preset's tau, cached in SCENE/memory); the rows
scored are every non-zero pixel feature of the held-out views, which neither the bank nor the PCA saw.
Rows, each a mean 1 - cos to those features:
- nearest bank entry: the best single entry (what a one-hot attention could give);
- linear PCA-d: the centred top-d principal components of the training features and back (distillation's
  decoder at its initialisation, the best linear code of that size);
- W random / W pca, least squares: each feature's query q solving q W = t, then the attention;
- W random / W pca, optimised: those queries after --steps Adam steps (lr 0.05) on (1 - cos) + MSE through the
  exact attention: what a query of that size can reach at all through that W.
No field is involved: this isolates the attention's reach from rendering and multi-view blending.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", type=Path)
    ap.add_argument("--model", default="effnet")
    ap.add_argument("--dim", type=int, default=16, help="query dimension c (M3's effnet slice: 16)")
    ap.add_argument("--steps", type=int, default=200, help="Adam steps of the optimised rows (0: skip them)")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from fmsplat.fields import m3
    from fmsplat.fields.base import parse_spaces
    from fmsplat.fields.configs import make_config
    from fmsplat.fields.distill import pca_basis
    from fmsplat.fields.memory import flatten_views, memory_attention, nonzero_rows

    from fmsplat.fields.base import teacher_maps
    from fmsplat.workspace import Workspace

    bundle = Workspace.open(args.scene)
    spec = parse_spaces([args.model], m3.DEFAULT_MODELS, "m3")[0]
    cfg = make_config("m3", "cpu")
    targets = teacher_maps(bundle, [spec], progress=False)[spec.alias]
    data = bundle.dataset
    train = [targets[i] for i in data.train_indices]
    bank, stats = m3.build_bank(bundle, spec, {bundle.view_name(i): targets[i] for i in data.train_indices}, cfg,
                                progress=False)
    bank = bank.raw.float()
    x = flatten_views([targets[i] for i in data.test_indices]).float()
    x = x[nonzero_rows(x)]
    d, c, temperature = bank.shape[1], args.dim, cfg.temperature

    def one_minus_cos(pred):
        return float((1 - F.cosine_similarity(pred, x, dim=-1)).mean())

    rows = []
    unit_bank = bank / bank.norm(dim=1, keepdim=True)
    rows.append(("nearest bank entry", one_minus_cos(bank[(x @ unit_bank.T).argmax(1)]), "–"))
    basis, mean = pca_basis(train, c)
    rows.append((f"linear PCA-{c} (distillation's decoder at this dim)", one_minus_cos((x - mean) @ basis @ basis.T + mean),
                 "–"))
    torch.manual_seed(0)
    projections = {"random N(0, 1) (official)": torch.randn(c, d), "pca (projection_init=pca)": m3.principal_projection(bank, c)}
    for name, w in projections.items():
        kept = float((bank @ torch.linalg.qr(w.T)[0]).square().sum() / bank.square().sum())
        q = x @ w.T @ torch.linalg.inv(w @ w.T)
        rows.append((f"W {name}, least squares", one_minus_cos(memory_attention(q, w, bank, temperature)), f"{100 * kept:.1f}"))
        if args.steps:
            t0 = time.perf_counter()
            q = (q / q.norm(dim=1, keepdim=True) * c ** 0.5).requires_grad_(True)
            opt = torch.optim.Adam([q], lr=0.05)
            for _ in range(args.steps):
                f = memory_attention(q, w, bank, temperature)
                loss = (1 - F.cosine_similarity(f, x, dim=-1)).mean() + F.mse_loss(f, x)
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                reached = one_minus_cos(memory_attention(q, w, bank, temperature))
            rows.append((f"W {name}, optimised ({args.steps} steps, {time.perf_counter() - t0:.0f} s)", reached,
                         f"{100 * kept:.1f}"))
    print(f"scene {args.scene}: {spec.alias} ({d}-d), bank {len(bank)} entries (tau {stats['tau']}), "
          f"{len(x)} held-out feature rows, query dim {c}, temperature {temperature}")
    print("| row | 1−cos to held-out features | bank energy in W's row space % |")
    print("|---|---:|---:|")
    for name, value, kept in rows:
        print(f"| {name} | {value:.3f} | {kept} |")


if __name__ == "__main__":
    main()
