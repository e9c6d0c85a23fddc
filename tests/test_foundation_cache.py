"""Feature cache: fp16 per view + manifest, resumable, damaged files detected and recomputed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fmsplat.foundation.cache import CacheError, FeatureCache, extract_features


class Pooled:
    """Cheap deterministic extractor: 4×4 average pooling; counts the views it encodes."""

    key = "fake-pool4"
    dim = 3
    language_aligned = False

    def __init__(self, fail_on: int | None = None):
        self.calls = 0
        self.fail_on = fail_on

    def encode_images(self, images):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise RuntimeError("simulated crash while encoding")
        x = torch.as_tensor(images)
        x = x.permute(2, 0, 1) if x.shape[-1] == 3 else x
        return F.avg_pool2d(x[None].float(), 4)


@pytest.fixture
def views():
    g = torch.Generator().manual_seed(0)
    return {f"images/frame {i:02d}.jpg": torch.rand(16, 24, 3, generator=g) for i in range(5)}


def test_roundtrip_manifest_and_fp16(tmp_path, views):
    cache = extract_features(views, Pooled(), tmp_path, progress=False)
    assert sorted(cache.views) == sorted(views)
    manifest = json.loads((tmp_path / "features" / "fake-pool4" / "manifest.json").read_text())
    assert manifest["key"] == "fake-pool4" and manifest["dim"] == 3 and manifest["grid"] == [4, 6]
    entry = manifest["views"]["images/frame 03.jpg"]
    assert "/" not in entry["file"] and len(entry["sha256"]) == 64 and entry["image_size"] == [16, 24]
    got = FeatureCache(tmp_path, Pooled()).get("images/frame 03.jpg")
    ref = F.avg_pool2d(views["images/frame 03.jpg"].permute(2, 0, 1)[None], 4)[0]
    torch.testing.assert_close(got, ref.half().float())
    assert not list((tmp_path / "features" / "fake-pool4").glob(".*tmp*"))  # no temp files left behind


def test_interrupted_run_resumes_where_it_stopped(tmp_path, views):
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(views, Pooled(fail_on=3), tmp_path, progress=False)
    partial = FeatureCache(tmp_path, Pooled())
    assert len(partial.views) == 2 and all(partial.has(v) for v in partial.views)
    resumed = Pooled()
    cache = extract_features(views, resumed, tmp_path, progress=False)
    assert resumed.calls == 3  # only the views the crash left undone
    assert sorted(cache.views) == sorted(views)
    again = Pooled()
    extract_features(views, again, tmp_path, progress=False)
    assert again.calls == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_view_is_detected_and_recomputed(tmp_path, views, damage):
    extract_features(views, Pooled(), tmp_path, progress=False)
    cache = FeatureCache(tmp_path, Pooled())
    name = "images/frame 01.jpg"
    path = cache.root / cache.manifest["views"][name]["file"]
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        path.unlink()
    reopened = FeatureCache(tmp_path, Pooled())
    assert not reopened.has(name) and all(reopened.has(v) for v in views if v != name)
    with pytest.raises(CacheError, match="frame 01.jpg.*not usable"):
        reopened.get(name)
    redo = Pooled()
    cache = extract_features(views, redo, tmp_path, progress=False)
    assert redo.calls == 1
    ref = F.avg_pool2d(views[name].permute(2, 0, 1)[None], 4)[0]
    torch.testing.assert_close(cache.get(name), ref.half().float())


def test_a_different_extractor_in_the_same_folder_is_refused(tmp_path, views):
    extract_features(views, Pooled(), tmp_path, progress=False)

    class Wider(Pooled):
        dim = 4

    with pytest.raises(CacheError, match="dim=3.*not of this extractor"):
        FeatureCache(tmp_path, Wider())
    with pytest.raises(ValueError, match=r"must be \(3, h, w\)"):
        FeatureCache(tmp_path, Pooled()).put("x", torch.zeros(4, 2, 2))


def test_dataset_like_source_uses_camera_names(tmp_path):
    class Cam:
        def __init__(self, name):
            self.name, self.width, self.height = name, 8, 8

    class Dataset:
        cameras = [Cam("a.png"), Cam("b.png")]

        def image(self, i):
            return torch.full((8, 8, 3), float(i) / 2)

    cache = extract_features(Dataset(), Pooled(), tmp_path, progress=False)
    assert cache.views == ["a.png", "b.png"]
    assert float(cache.get("b.png").mean()) == pytest.approx(0.5)


def test_non_finite_features_with_a_consistent_manifest_are_refused(tmp_path, views):
    """A feature file rewritten with a NaN, its manifest entry updated to match (size and hash), is refused
    when read, naming the file, instead of being served as NaN."""
    import hashlib
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    extract_features(views, Pooled(), tmp_path, progress=False)
    cache = FeatureCache(tmp_path, Pooled())
    name = "images/frame 01.jpg"
    entry = cache.manifest["views"][name]
    path = cache.root / entry["file"]
    feats = load_file(str(path))["features"].clone()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()  # the view name the file records
    feats[0, 0, 0] = float("nan")
    save_file({"features": feats}, str(path), metadata=meta)
    entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    cache.manifest_path.write_text(json.dumps(cache.manifest))
    reopened = FeatureCache(tmp_path, Pooled())
    assert reopened.problem(name) is None  # consistent with its manifest: only the values are wrong
    with pytest.raises(CacheError, match="1 non-finite feature value"):
        reopened.get(name)
