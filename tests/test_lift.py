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
                       latency_repeats=0, masks_3d=False)["summary"]
    assert s["loc_acc"] > 0.5 and s["loc_acc"] > s["loc_chance"] + 0.3, (s["loc_acc"], s["loc_chance"])
    assert s["gauss_in_box"] >= 0.5, s["gauss_in_box"]


def _resign(field_dir, meta, role="tensors"):
    """Record the current size and SHA-256 of `role`'s file in `meta` (a consistent manifest over damage)."""
    from fmsplat.workspace import sha256_file

    path = field_dir / meta["files"][role]["name"]
    meta["files"][role].update(bytes=path.stat().st_size, sha256=sha256_file(path))


def _field_mutations():
    """(label, mutate(field_dir, meta) -> meta to write, or None to leave field.json as it is)."""
    from safetensors.torch import load_file, save_file

    def tensors(change):
        def mutate(d, meta):
            path = d / meta["files"]["tensors"]["name"]
            t = load_file(str(path))
            change(t)
            save_file(t, str(path))
            _resign(d, meta)
            return meta
        return mutate

    def setm(fn):
        def mutate(d, meta):
            fn(meta)
            return meta
        return mutate

    def first(t):
        return sorted(t)[0]

    def nan(t):
        t[first(t)].view(-1)[0] = float("nan")

    def inf(t):
        t[first(t)].view(-1)[-1] = float("inf")

    def shape(t):
        k = first(t)
        t[k] = t[k][:-1].clone()

    def transpose(t):
        k = max(t, key=lambda k: t[k].dim())
        t[k] = t[k].reshape(-1).flip(0).reshape(t[k].shape[::-1]).clone() if t[k].dim() == 2 else t[k]

    def drop(t):
        t.pop(first(t))

    def dtype(t):
        k = first(t)
        t[k] = t[k].to(torch.int64)

    cases = [("unchanged", setm(lambda m: None))]
    cases += [(f"meta {key} removed", setm(lambda m, key=key: m.pop(key)))
              for key in ("spaces", "config", "method", "made_from", "files", "num_gaussians")]
    cases += [("spaces not a list", setm(lambda m: m.update(spaces=5))),
              ("a space a string", setm(lambda m: m.update(spaces=["effnet"]))),
              ("a space without a name", setm(lambda m: [s.pop("name", None) for s in m["spaces"]])),
              ("a space of an unknown model", setm(lambda m: m["spaces"][0].update(name="nosuch"))),
              ("config unknown key", setm(lambda m: m["config"].update(nosuch=1))),
              ("config value a string", setm(lambda m: m["config"].update(render_scale="big"))),
              ("config value NaN", setm(lambda m: m["config"].update(render_scale=float("nan")))),
              ("config a list", setm(lambda m: m.update(config=[1]))),
              ("method another", setm(lambda m: m.update(method="distill"))),
              ("num_gaussians off by one", setm(lambda m: m.update(num_gaussians=m["num_gaussians"] + 1))),
              ("owns_geometry without a Gaussians file", setm(lambda m: m.update(owns_geometry=True))),
              ("made_from other Gaussians", setm(lambda m: m["made_from"].update(gaussians="0" * 16))),
              ("tensors entry without sha256", setm(lambda m: m["files"]["tensors"].pop("sha256"))),
              ("tensors entry '../x'", setm(lambda m: m["files"]["tensors"].update(name="../x")))]
    cases += [("tensor NaN, manifest re-signed", tensors(nan)), ("tensor inf, manifest re-signed", tensors(inf)),
              ("tensor one row short, manifest re-signed", tensors(shape)),
              ("tensor transposed, manifest re-signed", tensors(transpose)),
              ("tensor missing, manifest re-signed", tensors(drop)),
              ("tensor integer, manifest re-signed", tensors(dtype))]

    def truncate(d, meta):
        path = d / meta["files"]["tensors"]["name"]
        path.write_bytes(path.read_bytes()[:100])
        return None

    def truncate_signed(d, meta):
        truncate(d, meta)
        _resign(d, meta)
        return meta

    def garbage(d, meta):
        (d / "field.json").write_bytes(b'{"method": "lift", \xff')
        return None

    cases += [("tensors truncated", truncate), ("tensors truncated, manifest re-signed", truncate_signed),
              ("field.json not UTF-8 JSON", garbage)]
    return cases


def test_fitted_field_mutations_load_correctly_or_fail_naming_the_field(lifted):
    """The fitted-field family of the reader harness (tests/test_readers_mutation.py): each mutation of a
    real lift field (its field.json and its tensors, with the manifest re-signed so the checksum does not
    catch it) must load the true field or raise the package's error naming the field's files; never a raw
    exception, never a field that differs from the one fitted."""
    import json
    import shutil

    from test_readers_mutation import classify

    scene, field = lifted
    field_dir = scene / "fields" / "lift"
    backup = scene.parent / "lift-backup"
    shutil.copytree(field_dir, backup)
    reference = load_field(scene, "lift")
    truth = {k: v.detach().clone() for k, v in reference.state_tensors().items()}
    truth_spaces = [s.to_json() for s in reference.spaces.values()]

    def same(loaded):
        got = loaded.state_tensors()
        return (set(got) == set(truth) and all(torch.equal(got[k], truth[k]) for k in truth)
                and [s.to_json() for s in loaded.spaces.values()] == truth_spaces and loaded.config == reference.config)

    outcomes = {}
    try:
        for label, mutate in _field_mutations():
            meta = json.loads((field_dir / "field.json").read_text())
            written = mutate(field_dir, meta)
            if written is not None:
                (field_dir / "field.json").write_text(json.dumps(written))
            outcomes[label] = classify(lambda: load_field(scene, "lift"), same, str(field_dir))
            shutil.rmtree(field_dir)
            shutil.copytree(backup, field_dir)
    finally:
        if not field_dir.is_dir():
            shutil.copytree(backup, field_dir)
        shutil.rmtree(backup)
    print("\n".join(f"  {label:45s} {o:16s} {d[:100]}" for label, (o, d) in outcomes.items()))
    assert outcomes["unchanged"][0] == "accepted-correct"
    bad = {label: o for label, o in outcomes.items() if o[0] not in ("accepted-correct", "rejected-named")}
    assert not bad, bad
    assert sum(o[0] == "rejected-named" for o in outcomes.values()) >= len(outcomes) - 3


def test_the_pyramid_can_be_asked_for_in_the_model_name():
    """`fit --models effnet@pyramid=true@tile_input=96` (was a TypeError: pyramid given twice)."""
    from fmsplat.fields.base import FieldError, parse_space

    spec = parse_space("effnet@pyramid=true@tile_input=96")
    assert spec.pyramid and dict(spec.options) == {"tile_input": 96} and "fmgs-pyramid" in spec.key
    assert not parse_space("effnet@pyramid=false").pyramid
    with pytest.raises(FieldError, match="pyramid must be true or false"):
        parse_space("effnet@pyramid=3")
