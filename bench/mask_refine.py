"""Does the relevancy map refine the whole-object mask? Variants of the 3D mask (ViewQuery.selection_coverage)
combined with the LangSplat cut of the relevancy map, scored on a labelled run's views (mIoU over its queries).

    python bench/mask_refine.py        # the bench room run below; edit its two paths for another
"""
import numpy as np
from scipy import ndimage
from fmsplat.query import SceneQuery
from fmsplat.scene.labels import read_label_dir
from fmsplat.eval import metrics as M
LANGSPLAT_KERNEL, LANGSPLAT_THRESHOLD = M.LANGSPLAT_KERNEL, M.LANGSPLAT_THRESHOLD
sq = SceneQuery.open("/tmp/s35/benchrun/scene")
labels = read_label_dir("/tmp/s35/benchrun/data")
from fmsplat.eval.protocol import _view_index
index = _view_index(sq.bundle)
rows = []
cache = {}
for stem, vl in labels.items():
    cam = sq.dataset.cameras[index[stem]]
    for cat in vl.categories() if hasattr(vl, "categories") else vl.labels:
        if cat not in cache:
            a = sq.ask(cat, all_parts=True); cache[cat] = (a, sq.whole_object(a))
        a, whole = cache[cat]
        gt = vl.mask(cat)
        cover, alpha = sq.views.selection_coverage(cam, whole, size=(vl.width, vl.height))
        cover, alpha = cover[0], alpha
        m3 = (cover >= 0.3 * np.maximum(alpha, 1e-6)) & (alpha >= 0.5)
        rel = sq.views.relevancy_map(cam, cat, size=(vl.width, vl.height)).detach().numpy()
        cut = M.langsplat_segmentation(rel, kernel=LANGSPLAT_KERNEL, threshold=LANGSPLAT_THRESHOLD)
        near = ndimage.binary_dilation(m3, iterations=4)
        soft = (cover >= 0.1 * np.maximum(alpha, 1e-6)) & (alpha >= 0.5)
        variants = {
            "3d": m3, "cut": cut,
            "3d | (cut & near)": m3 | (cut & near),
            "3d | (cut & soft)": m3 | (cut & soft),
            "(3d & cut) | (soft & cut)": (m3 & cut) | (soft & cut),
            "3d minus (~cut far from core)": m3 & (cut | ndimage.binary_erosion(m3, iterations=2)),
            "filled 3d": ndimage.binary_closing(m3, iterations=2) & (alpha >= 0.5),
        }
        rows.append((a.found, {k: M.iou(v, gt) for k, v in variants.items()}))
for k in rows[0][1]:
    print(f"{k:32s} all {100*np.mean([r[1][k] for r in rows]):.1f}  found {100*np.mean([r[1][k] for r in rows if r[0]]):.1f}")
print(len(rows), "queries")
