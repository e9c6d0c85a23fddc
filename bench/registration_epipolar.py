"""Per view, the share of its verified two-view geometries that the posed model agrees with (at least half of
the pair's inlier matches within 2 px of the model's epipolar lines, Sampson error), split by whether the
view is right against the truth: does that share tell a wrong registration from a right one?

    python bench/registration.py --seeds 0 1 2 --out /tmp/s36/reg     # first: the rooms and their models
    python bench/registration_epipolar.py                                # paths as below
"""
import sys, numpy as np, pycolmap
from pathlib import Path
from collections import defaultdict
from fmsplat.scene.sfm import pose_errors, poses_from_transforms, _world_to_camera

def view_support(db_path, rec, px=2.0):
    db = pycolmap.Database.open(str(db_path))
    try:
        name_to_model = {im.name: im for im in rec.images.values() if im.has_pose}
        id_to_name = {int(im.image_id): im.name for im in db.read_all_images()}
        pair_ids, geoms = db.read_two_view_geometries()
        kps = {}
        def kp(iid):
            if iid not in kps:
                kps[iid] = np.asarray(db.read_keypoints(iid))[:, :2]
            return kps[iid]
        good, total = defaultdict(int), defaultdict(int)
        for pid, g in zip(pair_ids, geoms):
            if int(g.config) < 2 or len(g.inlier_matches) < 15:
                continue
            a, b = pycolmap.pair_id_to_image_pair(int(pid))
            na, nb = id_to_name[int(a)], id_to_name[int(b)]
            if na not in name_to_model or nb not in name_to_model:
                continue
            ia, ib = name_to_model[na], name_to_model[nb]
            ca, cb = rec.cameras[ia.camera_id], rec.cameras[ib.camera_id]
            m = np.asarray(g.inlier_matches)
            x1 = np.asarray(ca.cam_from_img(kp(int(a))[m[:, 0]].astype(np.float64)))
            x2 = np.asarray(cb.cam_from_img(kp(int(b))[m[:, 1]].astype(np.float64)))
            Ta, Tb = ia.cam_from_world().matrix(), ib.cam_from_world().matrix()
            R = Tb[:, :3] @ Ta[:, :3].T; t = Tb[:, 3] - R @ Ta[:, 3]
            tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
            E = tx @ R
            h1 = np.c_[x1, np.ones(len(x1))]; h2 = np.c_[x2, np.ones(len(x2))]
            Ex1 = h1 @ E.T; Etx2 = h2 @ E
            num = np.einsum("ni,ni->n", h2, Ex1) ** 2
            den = Ex1[:, 0]**2 + Ex1[:, 1]**2 + Etx2[:, 0]**2 + Etx2[:, 1]**2
            err = num / np.maximum(den, 1e-18)
            f = 0.5 * (ca.mean_focal_length() + cb.mean_focal_length())
            ok = float(np.mean(err < (px / f) ** 2)) >= 0.5
            for n in (na, nb):
                total[n] += 1; good[n] += ok
        return {n: (good[n], total[n]) for n in name_to_model}
    finally:
        db.close()

for d, tr in [(f"/tmp/s36/reg/posed{s}", f"/tmp/s36/reg/room{s}/transforms.json") for s in (0, 1, 2)] + [("/tmp/s36/fox_unposed/data", "/work/shared/data/fox/transforms.json")]:
    d = Path(d); rec = pycolmap.Reconstruction(str(d / "sparse/0"))
    sup = view_support(d / "database.db", rec)
    e = pose_errors({Path(k).stem: v for k, v in _world_to_camera(rec).items()}, poses_from_transforms(tr))
    wrong = {k for k, v in e["per_view"].items() if v["rotation_deg"] > 5 or v["center_error"] > 0.05}
    rows = sorted(((Path(n).stem in wrong), round(g / max(t, 1), 2), t) for n, (g, t) in sup.items())
    w = [r[1] for r in rows if r[0]]; r_ = [r[1] for r in rows if not r[0]]
    print(d.name, "wrong shares", sorted(w)[:50], "\n   right shares", sorted(r_)[:50])
