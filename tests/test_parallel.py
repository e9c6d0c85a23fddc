"""The per-view stages on Ray (fmsplat.parallel), on a local cluster of 2 CPUs started by these tests:
feature extraction writes the same cache as the local path, lifting gives the same per-Gaussian features,
a worker killed mid-run is replaced and the run still ends with every view; and the streaming pieces
the distributed path relies on (lazy cached maps, a PCA from summed moments) agree with the in-memory ones."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch
from fmsplat.fields import fit_field, load_field
from fmsplat.fields.base import parse_spaces
from fmsplat.fields.distill import pca_basis
from fmsplat.foundation.cache import CacheError, CachedMaps, FeatureCache, extract_features
from fmsplat.foundation.registry import get_extractor
from fmsplat.workspace import Workspace
from fmsplat.fields.base import teacher_maps, teacher_views

ray = pytest.importorskip("ray")
cloudpickle = ray.cloudpickle  # Ray's own copy pickles what goes to the workers
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=256 << 20)
    yield "auto"
    ray.shutdown()


def _cache_tensors(scene_dir, extractor) -> dict[str, torch.Tensor]:
    cache = FeatureCache(scene_dir, extractor)
    return {name: cache.get(name) for name in cache.views}


class KillOnce:
    """An extractor that kills the process running it on its second view, once per test (a marker file):
    Ray must restart the worker and retry what it was doing."""

    def __init__(self, inner, marker) -> None:
        self.inner, self.marker, self.calls = inner, str(marker), 0
        self.key, self.dim = inner.key, inner.dim

    def encode_images(self, image):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # the worker process dies mid-run, no exception, no cleanup
        return self.inner.encode_images(image)


def test_features_on_ray_equal_the_local_cache(local_cluster, tiny_dataset, tmp_path):
    from fmsplat.scene import load_dataset

    data = load_dataset(tiny_dataset)
    extractor = get_extractor("effnet")
    extract_features(data, extractor, tmp_path / "local", progress=False)
    extract_features(data, extractor, tmp_path / "ray", progress=False, ray=local_cluster, workers=2)
    local, remote = _cache_tensors(tmp_path / "local", extractor), _cache_tensors(tmp_path / "ray", extractor)
    assert sorted(local) == sorted(remote) and len(local) == len(data)
    for name in local:  # fp16 in the cache: equal up to one rounding step of the stored half floats
        assert torch.allclose(local[name], remote[name], rtol=2e-3, atol=2e-3 * float(local[name].abs().max())), name


def test_a_worker_killed_mid_run_is_replaced_and_every_view_is_cached(local_cluster, tiny_dataset, tmp_path):
    from fmsplat.scene import load_dataset

    data = load_dataset(tiny_dataset)
    inner = get_extractor("effnet")
    marker = tmp_path / "killed"
    extract_features(data, KillOnce(inner, marker), tmp_path / "ray", progress=False, ray=local_cluster, workers=2)
    assert marker.exists()  # a worker did die
    cache = FeatureCache(tmp_path / "ray", inner)
    assert sorted(cache.views) == sorted(c.name for c in data.cameras)
    for i in (0, len(data) // 2, len(data) - 1):  # and what was cached is the extractor's answer
        name = data.cameras[i].name
        expected = inner.encode_images(data.image(i))[0]
        got = cache.get(name)
        assert torch.allclose(got, expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max())), name


def test_lift_on_ray_equals_the_local_lift(local_cluster, tiny_scene, tmp_path):
    """Same caches (extracted once, here), lifted in this process and by 2 Ray workers: the same decoders and
    per-Gaussian latents up to the order of the float additions."""
    base = tmp_path / "base"
    shutil.copytree(tiny_scene, base)
    bundle = Workspace.open(base)
    teacher_views(bundle, parse_spaces(["effnet", "effnet-mid"], [], "lift"), progress=False)
    scenes = {}
    for name, opts in (("local", {}), ("ray", {"ray": local_cluster, "workers": 2})):
        scenes[name] = tmp_path / name
        shutil.copytree(base, scenes[name])
        fit_field(scenes[name], "lift", models=["effnet", "effnet-mid"], progress=False, **opts)
    a, b = load_field(scenes["local"], "lift"), load_field(scenes["ray"], "lift")
    for key in a.weights:
        assert torch.equal(a.weights[key], b.weights[key]) and torch.equal(a.biases[key], b.biases[key])
    fa, fb = a.features.detach(), b.features.detach()
    assert fa.abs().max() > 0.1
    assert torch.allclose(fa, fb, rtol=1e-4, atol=1e-5 * float(fa.abs().max())), float((fa - fb).abs().max())
    assert b.summary["unseen_gaussians"] == a.summary["unseen_gaussians"]


def test_pca_from_summed_moments_matches_the_svd():
    """pca_basis streams the maps (mean and scatter summed per view): its directions span the same top
    subspace as the SVD of all features stacked, and its mean is theirs."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 40, generator=g) * torch.tensor([9.0, 7, 5, 3, 2, 1])[:, None]
    views = [(torch.randn(7 * 5, 6, generator=g) @ mix + 3.0 + 0.01 * torch.randn(35, 40, generator=g)).T.reshape(40, 7, 5)
             for _ in range(4)]
    basis, mean = pca_basis(views, 4)
    flat = torch.cat([v.reshape(40, -1) for v in views], 1).T.double()
    _, _, vt = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
    top = vt[:4].T.float()
    assert torch.allclose(mean, flat.mean(0).float(), atol=1e-5)
    assert torch.allclose(basis.T @ basis, torch.eye(4), atol=1e-5)
    assert torch.allclose(basis @ basis.T, top @ top.T, atol=1e-4)  # same projector onto the top-4 subspace


def test_cached_maps_read_lazily_and_notice_a_file_damaged_after_reading(tiny_scene, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    bundle = Workspace.open(scene)
    spec = parse_spaces(["effnet"], ["effnet"], "lift")[0]
    maps = teacher_views(bundle, [spec], progress=False)["effnet"]
    eager = teacher_maps(bundle, [spec], progress=False)["effnet"]
    assert len(maps) == len(eager) and torch.equal(maps[3], eager[3])
    again = cloudpickle.loads(cloudpickle.dumps(maps))  # what a Ray worker receives: paths, not tensors
    assert len(cloudpickle.dumps(maps)) < 20_000 and torch.equal(again[3], eager[3])
    cache = FeatureCache(scene, spec.extractor())
    path = cache.root / cache.manifest["views"][bundle.view_name(3)]["file"]
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="SHA-256"):
        maps[3]
    assert isinstance(maps, CachedMaps)


def test_algorithm1_bank_on_ray_is_the_local_bank(local_cluster, bundle):
    """M3's Algorithm 1 with its similarity chunks as Ray tasks (answers arriving in any order, the scan in
    row order on the driver) keeps exactly the rows, and counts, of the local run."""
    from fmsplat.fields.memory import flatten_views, nonzero_rows, similarity_reduction

    spec = parse_spaces(["effnet-mid"], [], "m3")[0]
    maps = teacher_views(bundle, [spec], progress=False)["effnet-mid"]
    x = flatten_views([maps[i] for i in bundle.dataset.train_indices])
    x = x[nonzero_rows(x)]
    local_idx, local_counts = similarity_reduction(x, 0.75, chunk=97, return_counts=True)
    ray_idx, ray_counts = similarity_reduction(x, 0.75, chunk=97, return_counts=True, ray=local_cluster, workers=2)
    assert 10 < len(local_idx) < 0.8 * len(x)  # a real reduction, over several chunks
    assert torch.equal(local_idx, ray_idx) and torch.equal(local_counts, ray_counts)


def test_eval_on_ray_scores_every_view_as_the_local_run(local_cluster, tiny_scene, tmp_path):
    """fmsplat eval --ray: the labelled views scored by 2 Ray workers holding the field (the teacher's features
    extracted on the cluster first) give the local run's queries, in the same order, with the same scores."""
    from fmsplat.eval import evaluate_scene

    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    fit_field(scene, "lift", models=["effnet"], progress=False)
    shutil.rmtree(scene / "features" / "effnet-lite0__scale1")  # the teacher is extracted again, on the cluster
    # (the 3D masks are scored in the calling process either way: off here)
    quick = dict(method="lift", out_dir=False, progress=False, fidelity=False, rgb=False, latency_repeats=0,
                 masks_3d=False)
    remote = evaluate_scene(scene, ray=local_cluster, workers=2, **quick)
    local = evaluate_scene(scene, **quick)
    assert len(local["queries"]) >= 5
    assert [(q["view"], q["category"]) for q in remote["queries"]] == [(q["view"], q["category"]) for q in local["queries"]]
    for a, b in zip(local["queries"], remote["queries"]):
        assert a["lift"]["pixel"] == b["lift"]["pixel"]
        for key in ("teacher",):
            assert a[key].keys() == b[key].keys()
    for key in ("loc_acc", "miou"):
        assert remote["summary"][key] == pytest.approx(local["summary"][key], abs=1e-9), key
    assert remote["teacher"]["loc_acc"] == pytest.approx(local["teacher"]["loc_acc"], abs=1e-9)


def test_a_cluster_that_is_not_there_is_named_in_seconds():
    """A wrong --ray address fails at once with the address in one line (Ray alone waits minutes)."""
    import socket

    from fmsplat.parallel import ParallelError, cluster

    with socket.socket() as s:  # a free local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ParallelError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        with cluster(f"127.0.0.1:{port}"):
            pass
    with pytest.raises(ParallelError, match="not HOST:PORT"):
        with cluster("nonsense"):
            pass
