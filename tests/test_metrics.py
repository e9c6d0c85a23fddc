"""Evaluation metrics and LERF relevancy on hand-made cases with known answers, and the protocols
on feature fields whose answer is known (painted from ground-truth ids, or shuffled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmsplat.eval import metrics as M
from fmsplat.query.relevancy import CANONICAL_NEGATIVES, relevancy


# ---------------------------------------------------------------------------------------------
# relevancy


def _unit(v):
    v = torch.as_tensor(v, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def test_relevancy_matches_lerf_softmax_definition():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(16, 5, 7, generator=g, dtype=torch.float64)
    q = torch.randn(16, generator=g, dtype=torch.float64)
    neg = torch.randn(len(CANONICAL_NEGATIVES), 16, generator=g, dtype=torch.float64)
    phi = _unit(feats.permute(1, 2, 0))
    qn, nn = _unit(q), _unit(neg)
    # The literal LERF definition: per negative, softmax over [phi.q, phi.neg]; keep the minimum.
    pos = phi @ qn
    probs = [torch.softmax(10 * torch.stack([pos, phi @ n], -1), -1)[..., 0] for n in nn]
    expected = torch.stack(probs, 0).amin(0)
    got = relevancy(feats, q, neg, dim=0)
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_relevancy_hand_cases():
    e = torch.eye(4, dtype=torch.float64)
    negatives = e[1:3]  # two negatives along axes 1 and 2
    feats = torch.stack([e[0], e[1], e[3], torch.zeros(4, dtype=torch.float64)])  # rows
    r = relevancy(feats, e[0], negatives, dim=-1)
    # phi = q, orthogonal to negatives: sigmoid(10). phi = a negative: sigmoid(-10).
    # phi orthogonal to all: sigmoid(0) = 0.5; a zero feature also 0.5.
    expected = torch.sigmoid(torch.tensor([10.0, -10.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(r, expected)
    # Several queries at once: a leading Q axis.
    rq = relevancy(feats, e[[0, 3]], negatives, dim=-1)
    assert rq.shape == (2, 4)
    torch.testing.assert_close(rq[0], r)
    assert rq[1, 2] == pytest.approx(float(torch.sigmoid(torch.tensor(10.0))))
    # Min over negatives: the negative most similar to phi decides.
    phi = _unit([1.0, 0.8, 0.1, 0.0])
    got = relevancy(phi[None], e[0], negatives, dim=-1)[0]
    assert float(got) == pytest.approx(float(torch.sigmoid(10 * (phi[0] - phi[1]))))


def test_relevancy_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="feature dim 8"):
        relevancy(torch.zeros(8, 2, 2), torch.zeros(4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="negatives must be"):
        relevancy(torch.zeros(8, 2, 2), torch.zeros(8), torch.zeros(0, 8))


# ---------------------------------------------------------------------------------------------
# localisation


def test_localization_hit_hand_cases():
    r = np.zeros((10, 20))
    r[3, 15] = 1.0  # argmax at x=15, y=3
    assert M.argmax_pixel(r) == (15, 3)
    assert M.localization_hit(r, [[10, 0, 15, 3]])  # inclusive edges
    assert not M.localization_hit(r, [[10, 0, 14, 9]])
    assert M.localization_hit(r, [[0, 0, 1, 1], [15, 3, 10, 0]])  # any box, corners in any order
    assert not M.localization_hit(r, np.zeros((0, 4)))
    # Ties go to the first pixel in row-major order.
    assert M.argmax_pixel(np.ones((4, 4))) == (0, 0)
    with pytest.raises(ValueError, match="NaN"):
        M.argmax_pixel(np.full((2, 2), np.nan))


def test_localization_smoothing_prefers_regions_over_single_spikes():
    r = np.zeros((60, 60))
    r[5, 5] = 1.0  # a one-pixel spike
    r[30:50, 30:50] = 0.8  # a large relevant region
    box = [30, 30, 49, 49]
    assert not M.localization_hit(r, [box])
    assert M.localization_hit(r, [box], smooth_kernel=30)


# ---------------------------------------------------------------------------------------------
# segmentation


def test_mean_filter_matches_explicit_reflect101_box_mean():
    rng = np.random.default_rng(0)
    img = rng.random((9, 11))
    size = 4
    padded = np.pad(img, ((2, 1), (2, 1)), mode="reflect")  # numpy 'reflect' = OpenCV REFLECT_101
    explicit = np.array([[padded[i : i + size, j : j + size].mean() for j in range(11)] for i in range(9)])
    np.testing.assert_allclose(M.mean_filter(img, size), explicit, atol=1e-12)


def test_langsplat_segmentation_threshold_is_0_7_of_the_normalised_map():
    # Kernel 1 makes the filter the identity, so the normalised map is the input itself.
    r = np.array([[0.0, 0.69, 0.71, 1.0]])
    mask = M.langsplat_segmentation(r, kernel=1, majority=None)
    assert mask.tolist() == [[False, False, True, True]]
    assert not M.langsplat_segmentation(np.full((5, 5), 0.3), majority=None).any()


def test_langsplat_segmentation_recovers_a_large_blob():
    r = np.zeros((120, 160))
    r[30:90, 40:120] = 1.0
    mask = M.langsplat_segmentation(r)
    assert M.iou(mask, r > 0) > 0.85


def test_majority_filter_removes_specks_and_keeps_regions():
    m = np.zeros((20, 20), bool)
    m[2, 2] = True
    m[8:18, 8:18] = True
    out = M.majority_filter(m, 7)
    assert not out[2, 2]
    assert out[10:16, 10:16].all()


def test_iou_and_pixel_accuracy_hand_cases():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :2] = True  # 2 px
    b[0, 1:4] = True  # 3 px, overlap 1
    assert M.iou(a, b) == pytest.approx(1 / 4)
    assert M.pixel_accuracy(a, b) == pytest.approx(13 / 16)  # 3 disagreeing pixels
    assert M.iou(a, a) == 1.0 and M.iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        M.iou(a, np.zeros((2, 2)))
    assert np.isnan(M.mean_or_nan([]))
    assert M.mean_or_nan([1, 0, 1, 0]) == 0.5


# ---------------------------------------------------------------------------------------------
# 3D localisation


def test_distance_to_aabb_hand_cases():
    lo, hi = np.zeros(3), np.array([1.0, 2.0, 3.0])
    assert M.distance_to_aabb([0.5, 1.0, 1.0], lo, hi) == 0.0
    assert M.distance_to_aabb([1.0, 2.0, 3.0], lo, hi) == 0.0  # on a corner
    assert M.distance_to_aabb([2.0, 1.0, 1.0], lo, hi) == pytest.approx(1.0)  # off a face
    assert M.distance_to_aabb([-3.0, -4.0, 1.0], lo, hi) == pytest.approx(5.0)  # off an edge
    assert M.distance_to_aabb([2.0, 4.0, 5.0], lo, hi) == pytest.approx(3.0)  # off a corner
    pts = np.array([[0.5, 0.5, 0.5], [2.0, 1.0, 1.0]])
    np.testing.assert_allclose(M.distance_to_aabb(pts, lo, hi), [0.0, 1.0])
    assert M.in_aabb([0.5, 0.5, 0.5], lo, hi) is True
    assert M.in_aabb(pts, lo, hi).tolist() == [True, False]
    with pytest.raises(ValueError, match="exceeds"):
        M.distance_to_aabb([0, 0, 0], hi, lo)


# ---------------------------------------------------------------------------------------------
# feature fidelity, RGB


def test_feature_fidelity_hand_cases():
    t = torch.zeros(3, 4, 4)
    t[0] = 1.0
    same = M.feature_fidelity(t, t)
    assert same["one_minus_cos"] == pytest.approx(0.0) and same["mse"] == pytest.approx(0.0)
    # Orthogonal everywhere: 1 - cos = 1; squared error 1 in two channels of three: MSE 2/3.
    p = torch.zeros(3, 4, 4)
    p[1] = 1.0
    r = M.feature_fidelity(p, t)
    assert r["one_minus_cos"] == pytest.approx(1.0) and r["mse"] == pytest.approx(2 / 3)
    # Scaled copy: cosine ignores scale, MSE does not.
    r = M.feature_fidelity(2 * t, t)
    assert r["one_minus_cos"] == pytest.approx(0.0, abs=1e-12) and r["mse"] == pytest.approx(1 / 3)
    # A prediction at twice the teacher's resolution is compared on the teacher's grid.
    big = t.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert M.feature_fidelity(big, t)["mse"] == pytest.approx(0.0, abs=1e-12)
    # Valid mask: only the selected pixels count.
    half = p.clone()
    half[:, :2] = t[:, :2]
    valid = np.zeros((4, 4), bool)
    valid[:2] = True
    assert M.feature_fidelity(half, t, valid)["one_minus_cos"] == pytest.approx(0.0, abs=1e-12)
    assert M.feature_fidelity(half, t)["one_minus_cos"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal D"):
        M.feature_fidelity(torch.zeros(2, 4, 4), t)


def test_rgb_metrics():
    rng = np.random.default_rng(0)
    img = rng.random((16, 16, 3))
    assert M.rgb_ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + 0.1, 0, 1)
    mse = np.mean((noisy - img) ** 2)
    assert M.rgb_psnr(noisy, img) == pytest.approx(-10 * np.log10(mse))
    assert M.rgb_ssim(noisy, img) < 1.0
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        M.rgb_psnr(img[..., 0], img[..., 0])


# ---------------------------------------------------------------------------------------------
# protocols on a field with a known answer


@pytest.fixture(scope="module")
def labelled_views(tmp_path_factory):
    """Label views of a small synthetic scene (ground truth only: labels + instance images)."""
    from fmsplat.scene.labels import read_label_dir, read_objects
    from fmsplat.scene.synthetic import load_instances, make_scene

    root = make_scene(tmp_path_factory.mktemp("metrics") / "scene", "tiny", seed=1, n_views=24, n_points=200)
    objects, _ = read_objects(root / "objects.json")
    ids = {o.label: o.instance_id for o in objects}
    views = []
    for stem, labels in read_label_dir(root).items():
        views.append((labels, load_instances(root / "instances" / f"{stem}.png"), ids))
    return views


def _score(views, paint):
    hits, ious, accs = [], [], []
    for labels, inst, ids in views:
        for cat in labels.categories():
            r = paint(inst, ids[cat])
            hits.append(M.localization_hit(r, labels.boxes(cat)))
            pred = M.langsplat_segmentation(r)
            gt = labels.mask(cat)
            ious.append(M.iou(pred, gt))
            accs.append(M.pixel_accuracy(pred, gt))
    return M.mean_or_nan(hits), M.mean_or_nan(ious), M.mean_or_nan(accs), len(hits)


def _painted(inst, inst_id):
    # Relevancy high on the object, low elsewhere, plus mild noise so argmax is not a tie.
    rng = np.random.default_rng(inst_id)
    return np.where(inst == inst_id, 0.9, 0.3) + 0.01 * rng.random(inst.shape)


def test_protocols_score_a_perfect_field_perfectly(labelled_views):
    loc, miou, macc, n = _score(labelled_views, _painted)
    assert n >= 6
    assert loc == 1.0
    # The 30x30 filter rounds corners on these small images, hence "about" 1.
    assert miou > 0.8
    assert macc > 0.95


def test_protocols_score_a_shuffled_field_near_chance(labelled_views):
    rng = np.random.default_rng(0)

    def shuffled(inst, inst_id):
        return rng.permutation(_painted(inst, inst_id).reshape(-1)).reshape(inst.shape)

    loc, miou, _, _ = _score(labelled_views * 20, shuffled)
    # Chance for a random argmax pixel: the mean fraction of the image the GT boxes cover.
    chance = np.mean([
        M.mean_or_nan(
            ((labels.boxes(c)[0, 2] - labels.boxes(c)[0, 0] + 1) * (labels.boxes(c)[0, 3] - labels.boxes(c)[0, 1] + 1))
            / (labels.width * labels.height)
            for c in labels.categories()
        )
        for labels, _, _ in labelled_views
    ])
    assert abs(loc - chance) < 0.15
    assert miou < 0.35
