"""`fmsplat features`: scene.json resolution, cache written for every view, clear error without data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fmsplat.apps.cli import app
from fmsplat.foundation.cache import FeatureCache
from fmsplat.apps.features import parse_options, resolve_data
from fmsplat.foundation.registry import get_extractor


def _tiny_dataset(root):
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "images" / f"{i:04d}.png")
        pose = np.eye(4)
        pose[0, 3] = 0.1 * i
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": pose.tolist()})
    meta = {"fl_x": 80.0, "fl_y": 80.0, "cx": 48.0, "cy": 32.0, "w": 96, "h": 64, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def test_features_command_uses_scene_json_and_caches_every_view(tmp_path):
    data = _tiny_dataset(tmp_path / "data")
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "scene.json").write_text(json.dumps({"data": {"path": str(data), "downscale": 2, "test_every": 8}}))
    result = CliRunner().invoke(app, ["features", str(scene), "--model", "effnet-mid", "--opt", "stride=8"])
    assert result.exit_code == 0, result.output
    cache = FeatureCache(scene, get_extractor("effnet-mid", stride=8))
    assert len(cache.views) == 3 and all(cache.has(v) for v in cache.views)
    # downscale 2 from scene.json: 32 × 48 images -> stride-8 grid 4 × 6
    assert cache.manifest["grid"] == [4, 6] and cache.get(cache.views[0]).shape == (40, 4, 6)
    assert "3 views" in result.output


def test_extractor_options_parse():
    assert parse_options(["input_scale=2", "stride=8", "mode=maskclip", "x=1.5", "flag=true"]) == {
        "input_scale": 2, "stride": 8, "mode": "maskclip", "x": 1.5, "flag": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["stride"])


def test_explicit_options_override_and_missing_data_is_an_error(tmp_path):
    (tmp_path / "scene.json").write_text(json.dumps({"data": {"path": "/recorded", "downscale": 4}}))
    assert resolve_data(tmp_path, None, None) == ("/recorded", 4.0)
    assert resolve_data(tmp_path, "/other", 2.0) == ("/other", 2.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no scene.json: pass the dataset with --data"):
        resolve_data(empty, None, None)
    result = CliRunner().invoke(app, ["features", str(empty)])
    assert result.exit_code != 0 and "--data" in result.output + str(result.exception)
