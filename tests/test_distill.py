"""Distillation baseline: it learns (held-out features beat a scrambled field), saves/loads exactly,
resumes to the same result as an uninterrupted run, and rejects bad settings by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fmsplat.fields import FieldError, fit_field, load_field
from fmsplat.fields.distill import pool_to
from fmsplat.workspace import Workspace
from fmsplat.fields.base import feature_cache

MODELS = ["effnet", "effnet-mid"]


def _heldout_agreement(field, bundle, alias):
    """Mean cosine, over held-out grid cells, between rendered and teacher features, both centred on
    the decoder's bias (the training mean): what is left is what the field knows about *this* cell."""
    cache = feature_cache(bundle, field.space(alias), progress=False)
    mean = field.biases[alias].detach()
    cos = []
    for i in bundle.dataset.test_indices:
        target = cache.get(bundle.view_name(i))
        out = field.render(bundle.dataset.cameras[i], spaces=[alias])
        pred = pool_to(out.features[alias], tuple(target.shape[-2:]))
        cos.append(F.cosine_similarity(pred.flatten(1).T - mean, target.flatten(1).T - mean, dim=1).mean())
    return float(torch.stack(cos).mean())


@pytest.fixture(scope="module")
def fitted(tiny_scene, tmp_path_factory):
    import shutil

    scene = tmp_path_factory.mktemp("distill") / "scene"
    shutil.copytree(tiny_scene, scene)
    field = fit_field(scene, "distill", models=MODELS, steps=100, progress=False)
    return scene, field


def test_fit_beats_scrambled_features_on_heldout_views(fitted):
    scene, field = fitted
    bundle = Workspace.open(scene)
    fit_cos = {a: _heldout_agreement(field, bundle, a) for a in MODELS}
    with torch.no_grad():
        perm = torch.randperm(field.features.shape[0], generator=torch.Generator().manual_seed(0))
        field.features.copy_(field.features[perm])
    scrambled = {a: _heldout_agreement(field, bundle, a) for a in MODELS}
    with torch.no_grad():
        field.features.copy_(field.features[torch.argsort(perm)])
    for a in MODELS:
        assert fit_cos[a] > 0.25 and fit_cos[a] > scrambled[a] + 0.2, (a, fit_cos[a], scrambled[a])


def test_saved_field_renders_the_same(fitted):
    scene, field = fitted
    loaded = load_field(scene, "distill")
    cam = Workspace.open(scene).dataset.cameras[3]
    a, b = field.render(cam), loaded.render(cam)
    for alias in MODELS:
        torch.testing.assert_close(a.features[alias], b.features[alias])
    torch.testing.assert_close(field.gaussian_features("effnet"), loaded.gaussian_features("effnet"))
    assert loaded.language_space == "effnet" and loaded.spaces["effnet"].language_aligned
    assert (scene / "fields" / "distill" / "field.json").is_file()


def test_resume_matches_uninterrupted_run(copy_scene, tmp_path, monkeypatch):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(copy_scene, other)
    kw = dict(models=["effnet-mid"], steps=12, checkpoint_every=5, progress=False)
    full = fit_field(copy_scene, "distill", **kw)

    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def failing_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        fit_field(other, "distill", **kw)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    ckpt = other / "fields" / "distill" / "checkpoint.pt"
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] == 5
    assert not (other / "fields" / "distill" / "field.json").exists()
    resumed = fit_field(other, "distill", resume=True, **kw)
    torch.testing.assert_close(resumed.features, full.features, atol=1e-5, rtol=1e-4)
    assert not ckpt.exists()


def test_bad_settings_are_named(copy_scene):
    with pytest.raises(FieldError, match="no_such_field"):
        fit_field(copy_scene, "distill", models=["effnet-mid"], no_such_field=1, progress=False)
    with pytest.raises(ValueError, match="unknown extractor"):
        fit_field(copy_scene, "distill", models=["nomodel"], progress=False)
    with pytest.raises(FieldError, match="unknown method"):
        fit_field(copy_scene, "nomethod")
    with pytest.raises(FieldError, match="no fitted field"):
        load_field(copy_scene)


def test_baseline_finds_most_labelled_objects(tiny_scene, tmp_path):
    """End to end on the tiny preset with the embedded default: fit, then the LERF protocol of
    `fmsplat eval`. The argmax of the relevancy map must fall inside the object's box for most
    labelled (view, object) pairs: far above the box-area chance a random field would score."""
    import shutil

    from fmsplat.eval import evaluate_scene

    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    fit_field(scene, "distill", models=["effnet@input_scale=2", "effnet-mid"], steps=100, progress=False)
    result = evaluate_scene(scene, method="distill", out_dir=False, progress=False, panels=False, fidelity=False,
                            rgb=False, latency_repeats=0, masks_3d=False)
    s = result["summary"]
    assert len(result["queries"]) >= 6
    print(f"distill, 100 steps: loc {s['loc_acc']:.2f} (chance {s['loc_chance']:.2f}), 3D in box {s['gauss_in_box']:.2f}")
    assert s["loc_acc"] > 0.5 and s["loc_acc"] > s["loc_chance"] + 0.3, (s["loc_acc"], s["loc_chance"])
    # the 3D point taken from the Gaussians' decoded features lands in (or next to) most objects' boxes
    assert s["gauss_in_box"] >= 0.5, s["gauss_in_box"]


def test_relevancy_in_latent_space_equals_the_decoded_map(fitted):
    """DistillField.render_text_dots works in the 32-d latent space (the decoder is linear): the same
    relevancy as decoding every pixel to 1280 dimensions."""
    from fmsplat.query import QueryCore, ViewQuery

    scene, field = fitted
    views = ViewQuery(QueryCore(field))
    cam = Workspace.open(scene).dataset.cameras[5]
    texts = ["cat", "motorcycle"]
    fast, render = views.relevancy_fast(cam, texts)
    slow = views.relevancy_maps(views.render(cam), texts)
    assert fast.shape == slow.shape and float(slow.std()) > 1e-3
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)
    assert render.features == {}
