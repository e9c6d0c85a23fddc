"""LLFF datasets (poses_bounds.npy beside images/): the tiny room written in LLFF's own layout, with
LLFF's axis order, reads back as the same cameras; broken files are refused naming the row."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmsplat.scene import load_dataset
from fmsplat.scene.errors import DatasetError


def write_llff(dataset, out: Path, near: float = 0.5, far: float = 20.0, shrink: int = 1) -> Path:
    """`dataset`'s views as an LLFF folder: images in sorted order (renamed so the order is the views'),
    each pose as LLFF stores it: the c2w rotation's columns [down, right, backwards], the centre, and
    (height, width, focal) of the full-size image. `shrink`: the images stored that many times smaller."""
    (out / "images").mkdir(parents=True)
    rows = []
    for i, cam in enumerate(dataset.cameras):
        img = Image.open(cam.image_path)
        if shrink > 1:
            img = img.resize((cam.width // shrink, cam.height // shrink), Image.LANCZOS)
        img.save(out / "images" / f"{i:04d}.png")
        c2w = cam.c2w  # OpenCV: right, down, forwards
        rot = np.stack([c2w[:3, 1], c2w[:3, 0], -c2w[:3, 2]], axis=1)
        pose = np.concatenate([rot, c2w[:3, 3:4], [[cam.height], [cam.width], [cam.K[0, 0]]]], axis=1)
        rows.append(np.concatenate([pose.reshape(-1), [near, far]]))
    np.save(out / "poses_bounds.npy", np.asarray(rows))
    return out


@pytest.fixture(scope="module")
def truth(tiny_dataset):
    return load_dataset(tiny_dataset, test_every=0)


def test_llff_folder_reads_back_as_the_same_cameras(truth, tmp_path):
    root = write_llff(truth, tmp_path / "llff")
    for path in (root, root / "poses_bounds.npy"):
        got = load_dataset(path, test_every=0)
        assert got.format == "llff" and len(got) == len(truth)
        for a, b in zip(got.cameras, truth.cameras):
            np.testing.assert_allclose(a.viewmat, b.viewmat, atol=1e-9)
            np.testing.assert_allclose(a.K, b.K, atol=1e-9)
            assert (a.width, a.height) == (b.width, b.height)
        np.testing.assert_array_equal(got.image(3), truth.image(3))
    # every camera's frustum between its bounds lies in the scene box; a point far beyond them does not
    lo, hi = got.scene_box
    for cam in got.cameras:
        for depth in (0.5, 20.0):
            p = cam.c2w[:3, :3] @ np.array([0.0, 0.0, depth]) + cam.c2w[:3, 3]
            assert np.all(p >= lo - 1e-9) and np.all(p <= hi + 1e-9)


def test_llff_images_smaller_than_the_poses_scale_the_focal_length(truth, tmp_path):
    got = load_dataset(write_llff(truth, tmp_path / "llff", shrink=2), test_every=0)
    for a, b in zip(got.cameras, truth.cameras):
        assert (a.width, a.height) == (b.width // 2, b.height // 2)
        np.testing.assert_allclose(a.K[0, 0], b.K[0, 0] / 2, rtol=1e-12)
        # the same rays: a world point projects to half the pixel coordinates (centres at half-pixels)
        p = b.c2w[:3, :3] @ np.array([0.1, -0.05, 1.0]) * 3 + b.c2w[:3, 3]

        def px(cam):
            q = cam.viewmat[:3, :3] @ p + cam.viewmat[:3, 3]
            return (cam.K @ (q / q[2]))[:2]
        np.testing.assert_allclose(px(a), px(b) / 2, atol=1e-9)


@pytest.mark.parametrize("damage, words", [
    (lambda a: a[:, :16], "expected an (N, 17) array"),
    (lambda a: np.where(np.arange(17) == 3, np.nan, a), "row 0, column 3 is nan"),
    (lambda a: np.concatenate([a[:, :15], a[:, 16:17], a[:, 15:16]], axis=1), "0 < near < far"),
    (lambda a: a[:-1], "poses, but"),
    (lambda a: np.concatenate([a[:, :4] * 2, a[:, 4:]], axis=1), "not orthonormal"),
])
def test_broken_llff_files_are_refused_naming_the_problem(truth, tmp_path, damage, words):
    root = write_llff(truth, tmp_path / "llff")
    arr = np.load(root / "poses_bounds.npy")
    np.save(root / "poses_bounds.npy", damage(arr))
    with pytest.raises(DatasetError, match=re.escape(words)) as err:
        load_dataset(root)
    assert "poses_bounds.npy" in str(err.value)


def test_llff_reduced_folders_are_read_when_the_resolution_allows(truth, tmp_path):
    """images_2/ (every image 2x smaller) is the source at 1/2 and 1/3 scale, images/ at full size; a
    folder missing an image is not used. The images_2 copies are marked (colours inverted) to tell them
    apart from a resize of the full images."""
    root = write_llff(truth, tmp_path / "llff")
    (root / "images_2").mkdir()
    for f in sorted((root / "images").iterdir()):
        img = Image.open(f).convert("RGB")
        img = img.resize((img.width // 2, img.height // 2), Image.LANCZOS)
        Image.fromarray(255 - np.asarray(img)).save(root / "images_2" / f.name)
    full = load_dataset(root, test_every=0)
    half = load_dataset(root, downscale=2, test_every=0)
    third = load_dataset(root, downscale=3, test_every=0)
    assert full.image_file(0).parent.name == "images" and half.image_file(0).parent.name == "images_2"
    assert third.image_file(0).parent.name == "images_2"
    marked = np.asarray(Image.open(root / "images_2" / "0000.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(half.image(0), marked, atol=1e-6)
    (root / "images_2" / "0005.png").unlink()
    partial = load_dataset(root, downscale=2, test_every=0)
    assert partial.image_file(0).parent.name == "images"
