"""Training-free lifting: a lone Gaussian gets its region's mean feature, lifting agrees with a direct
per-pixel computation (one-hot renders of every Gaussian through the torch reference rasterizer), and
the lifted field on the tiny scene knows its held-out views and finds the labelled objects."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fmsplat.fields import fit_field, load_field
from fmsplat.fields.lift import lift_maps
from fmsplat.gaussians import GaussianModel
from fmsplat.render import rasterize
from fmsplat.scene import Camera
from fmsplat.workspace import Workspace
from fmsplat.fields.base import feature_cache


def _model(means, log_scales, logits) -> GaussianModel:
    n = len(means)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1)
    return GaussianModel(means=torch.as_tensor(means, dtype=torch.float32), quats=quats,
                         scales=torch.as_tensor(log_scales, dtype=torch.float32),
                         opacities=torch.as_tensor(logits, dtype=torch.float32), sh=torch.zeros(n, 1, 3), sh_degree=0)


def _camera(yaw: float, width=48, height=40) -> Camera:
    R = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    viewmat = np.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = [0.0, 0.0, 4.0]
    K = np.array([[50.0, 0, width / 2], [0, 50.0, height / 2], [0, 0, 1]])
    return Camera(K=K, viewmat=viewmat, width=width, height=height)


def test_a_lone_gaussian_gets_the_mean_feature_of_the_region_it_covers():
    """Two small Gaussians, each alone over its half of the image; the map is constant on each half
    (and noise elsewhere would not reach them): each lifts to its half's feature exactly."""
    g = _model([[-0.8, 0.0, 0.0], [0.8, 0.0, 0.0]], [[-2.5] * 3] * 2, [3.0, 3.0])
    cam = _camera(0.0)
    left, right = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-0.3, 0.7, 4.0])
    fmap = torch.empty(3, cam.height, cam.width)
    fmap[:, :, : cam.width // 2] = left[:, None, None]
    fmap[:, :, cam.width // 2:] = right[:, None, None]
    lifted, weights = lift_maps(g, [cam], [fmap])
    assert (weights > 1.0).all(), weights  # both are seen, over several pixels
    torch.testing.assert_close(lifted[0], left, atol=1e-5, rtol=0)
    torch.testing.assert_close(lifted[1], right, atol=1e-5, rtol=0)


def test_lifting_agrees_with_a_direct_per_pixel_computation():
    """Overlapping Gaussians, two views, random maps: lifted = sum_views sum_p w_gp F_p / sum w_gp, with
    w_gp read from a one-hot render of every Gaussian by the torch reference rasterizer."""
    gen = torch.Generator().manual_seed(0)
    n = 30
    means = torch.randn(n, 3, generator=gen) * 0.5
    g = _model(means, torch.log(torch.rand(n, 3, generator=gen) * 0.2 + 0.05), torch.randn(n, generator=gen))
    cams = [_camera(0.0), _camera(0.4)]
    maps = [torch.randn(5, c.height, c.width, generator=gen) for c in cams]
    lifted, weights = lift_maps(g, cams, maps)
    m, q, s, o = (t.detach().double() for t in g.activated())
    num, den = torch.zeros(n, 5, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for cam, fmap in zip(cams, maps):
        w = rasterize(m, q, s, o, torch.eye(n, dtype=torch.float64), cam.viewmat_tensor().double(),
                      cam.K_tensor().double(), cam.width, cam.height, backend="torch").image  # (h, w, n)
        num += torch.einsum("hwg,chw->gc", w, fmap.double())
        den += w.sum((0, 1))
    seen = den > 1e-3
    assert seen.sum() >= n // 2
    torch.testing.assert_close(weights.double(), den, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(lifted.double()[seen], (num / den[:, None])[seen], atol=2e-4, rtol=1e-3)


MODELS = ["effnet", "effnet-mid"]
# the tiny scene's 128x96 photos give effnet a 4x3 grid; at input_scale=2 it is 8x6 (as the distill test)
FINE = ["effnet@input_scale=2", "effnet-mid"]


@pytest.fixture(scope="module")
def lifted(tiny_scene, tmp_path_factory):
    import shutil

    scene = tmp_path_factory.mktemp("lift") / "scene"
    shutil.copytree(tiny_scene, scene)
    return scene, fit_field(scene, "lift", models=MODELS, progress=False)


def test_lifted_field_knows_the_held_out_views(lifted):
    """Rendered features agree with the teacher on held-out views (centred cosine) far better than the
    same latents scrambled over the Gaussians; the saved field renders the same."""
    scene, field = lifted
    bundle = Workspace.open(scene)

    def agreement(f, alias):
        cache = feature_cache(bundle, f.space(alias), progress=False)
        mean, cos = f.biases[alias].detach(), []
        for i in bundle.dataset.test_indices:
            target = cache.get(bundle.view_name(i))
            pred = F.adaptive_avg_pool2d(f.render(bundle.dataset.cameras[i], spaces=[alias]).features[alias][None],
                                         tuple(target.shape[-2:]))[0]
            cos.append(F.cosine_similarity(pred.flatten(1).T - mean, target.flatten(1).T - mean, dim=1).mean())
        return float(torch.stack(cos).mean())

    ok = {a: agreement(field, a) for a in MODELS}
    perm = torch.randperm(field.features.shape[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        field.features.copy_(field.features[perm])
    scrambled = {a: agreement(field, a) for a in MODELS}
    with torch.no_grad():
        field.features.copy_(field.features[torch.argsort(perm)])
    for a in MODELS:
        assert ok[a] > 0.25 and ok[a] > scrambled[a] + 0.2, (a, ok[a], scrambled[a])
    loaded = load_field(scene, "lift")
    cam = bundle.dataset.cameras[3]
    torch.testing.assert_close(loaded.render(cam).features["effnet"], field.render(cam).features["effnet"])
    assert loaded.summary["steps"] == 0 and loaded.summary["unseen_gaussians"] < len(bundle.gaussians) // 4


def test_a_field_saved_with_the_retired_settings_still_loads(lifted):
    """field.json of a lift field saved when LiftConfig still had steps, checkpoint_every and seed."""
    import json

    from fmsplat.fields.lift import RETIRED_SETTINGS

    scene, field = lifted
    meta_path = scene / "fields" / "lift" / "field.json"
    meta = json.loads(meta_path.read_text())
    assert not set(RETIRED_SETTINGS) & set(meta["config"])
    meta["config"].update(steps=0, checkpoint_every=1, seed=0)
    meta_path.write_text(json.dumps(meta))
    assert load_field(scene, "lift").config == field.config


def test_lifted_field_finds_the_labelled_objects(lifted):
    """The LERF protocol of `fmsplat eval` on the lifted field, no training step: the relevancy argmax
    falls in the object's box for most labelled (view, object) pairs, far above chance."""
    from fmsplat.eval import evaluate_scene

    scene, _ = lifted
    fit_field(scene, "lift", models=FINE, progress=False)
    s = evaluate_scene(scene, method="lift", out_dir=False, progress=False, panels=False, fidelity=False, rgb=False,
                       latency_repeats=0)["summary"]
    assert s["loc_acc"] > 0.5 and s["loc_acc"] > s["loc_chance"] + 0.3, (s["loc_acc"], s["loc_chance"])
    assert s["gauss_in_box"] >= 0.5, s["gauss_in_box"]
