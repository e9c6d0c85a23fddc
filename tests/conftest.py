"""Shared fixtures: one tiny labelled synthetic scene, generated and trained once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The `tiny` synthetic preset (24 views, 128x96, 4 labelled objects) as a dataset directory."""
    from fmsplat.scene.synthetic import make_scene

    return make_scene(tmp_path_factory.mktemp("tiny") / "data", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_scene(tiny_dataset, tmp_path_factory):
    """A scene directory trained on `tiny_dataset` (short 3DGS run, capped Gaussian count).

    Tests that write fields into it must use their own copy (`copy_scene`) or method-specific names."""
    from fmsplat.reconstruct import TrainConfig, train_gaussians

    out = tmp_path_factory.mktemp("tiny_scene") / "scene"
    # The 3DGS strategy, as the field tests' thresholds were set on (MCMC is the trainer's default).
    train_gaussians(tiny_dataset, out, TrainConfig(steps=300, max_gaussians=12_000, sh_degree=1, strategy="3dgs"),
                    progress=False)
    return out


@pytest.fixture
def copy_scene(tiny_scene, tmp_path):
    """A private copy of the trained tiny scene (gaussians.ply, scene.json, cached features)."""
    import shutil

    dst = tmp_path / "scene"
    shutil.copytree(tiny_scene, dst)
    return dst


@pytest.fixture(scope="module")
def bundle(tiny_scene):
    """The trained tiny scene, opened (dataset + Gaussians)."""
    from fmsplat.workspace import Workspace

    return Workspace.open(tiny_scene)


@pytest.fixture(scope="module")
def objects(tiny_dataset):
    """{label: SceneObjectInfo} of the tiny scene's objects.json (3D boxes)."""
    from pathlib import Path

    from fmsplat.scene.labels import read_objects

    return {o.label: o for o in read_objects(Path(tiny_dataset) / "objects.json")[0]}
