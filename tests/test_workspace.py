"""The scene workspace: artefacts committed as one unit, and refused when made from something else.

Kills are simulated at every write step of a save (the renames that make files current, and the removal
of the old version after them): whatever step fails, the scene opens and its field or bank is the old
one or the new one, never an error or a mix.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from fmsplat.errors import SceneError
from fmsplat.workspace import Workspace


class Killed(Exception):
    pass


def _lift(scene):
    from fmsplat.fields import fit_field

    return fit_field(scene, "lift", models=["effnet"], progress=False)


def _tensors(field_) -> dict:
    return {k: v.clone() for k, v in field_.state_tensors().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kill_at(monkeypatch, module_os, k: int):
    """Make the k-th os.replace (1-based) of fmsplat.atomic raise, as a kill at that instant would stop it."""
    real, calls = os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == k:
            raise Killed(f"killed at rename {k} ({Path(dst).name})")
        return real(src, dst)

    monkeypatch.setattr(module_os, "replace", replace)
    return calls


def test_a_field_save_killed_at_any_write_step_leaves_the_old_field_or_the_new(copy_scene, monkeypatch):
    from fmsplat import atomic
    from fmsplat.fields import load_field

    old_field = _lift(copy_scene)
    old = _tensors(old_field)
    with torch.no_grad():
        old_field.features.mul_(-1.0)  # the "new" version: every latent changed
    new = _tensors(old_field)
    field_dir = Workspace(copy_scene).field_dir("lift")
    outcomes = []
    for k in range(1, 10):
        with monkeypatch.context() as m:
            calls = _kill_at(m, atomic.os, k)
            try:
                old_field.save(copy_scene)
                killed = False
            except Killed:
                killed = True
        got = _tensors(load_field(copy_scene, "lift"))
        assert _same(got, old) or _same(got, new), f"kill at rename {k}: neither the old nor the new field"
        outcomes.append("new" if _same(got, new) else "old")
        # no temporary files left behind, and no versions beyond the current one
        assert not [p.name for p in field_dir.iterdir() if ".tmp" in p.name], k
        if not killed:
            assert calls[0] < k and outcomes[-1] == "new"
            break
        # put the old version back for the next kill point
        with torch.no_grad():
            old_field.features.mul_(-1.0)
        old_field.save(copy_scene)
        with torch.no_grad():
            old_field.features.mul_(-1.0)
    assert outcomes[0] == "old" and outcomes[-1] == "new"  # a kill before the manifest keeps the old field

    # a kill after the manifest, while the old version's files are removed: the new field, stale files at most
    with torch.no_grad():
        old_field.features.mul_(-1.0)
    real_unlink = Path.unlink

    def unlink(self, *a, **kw):
        if self.parent == field_dir:
            raise Killed("killed while removing the old version")
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Killed):
        old_field.save(copy_scene)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert _same(_tensors(load_field(copy_scene, "lift")), old)


def test_a_bank_save_killed_at_its_rename_leaves_the_old_bank(tmp_path, monkeypatch):
    from fmsplat import atomic
    from fmsplat.fields.memory import MemoryBank, read_bank, write_bank

    path = Workspace(tmp_path).bank_path("effnet")
    g = torch.Generator().manual_seed(0)
    old = MemoryBank.from_rows(torch.randn(50, 8, generator=g), 0.9)
    new = MemoryBank.from_rows(torch.randn(60, 8, generator=g), 0.9)
    write_bank(path, old, {"tau": 0.9, "rows_seen": old.rows_seen})
    with monkeypatch.context() as m:
        _kill_at(m, atomic.os, 1)
        with pytest.raises(Killed):
            write_bank(path, new, {"tau": 0.9, "rows_seen": new.rows_seen})
    bank, _ = read_bank(path)
    assert torch.equal(bank.raw, old.raw) and [p.name for p in path.parent.iterdir()] == [path.name]
    write_bank(path, new, {"tau": 0.9, "rows_seen": new.rows_seen})
    assert torch.equal(read_bank(path)[0].raw, new.raw)


def test_a_reordered_gaussians_ply_is_refused_in_one_line(copy_scene):
    from fmsplat.gaussians import GaussianModel

    ws = Workspace(copy_scene)
    g = GaussianModel.load_ply(ws.gaussians_ply)
    order = torch.randperm(len(g), generator=torch.Generator().manual_seed(1))
    g.subset(order).save_ply(ws.gaussians_ply)  # the same Gaussians, the same count, another order
    with pytest.raises(SceneError) as err:
        Workspace.open(copy_scene)
    message = str(err.value)
    assert "\n" not in message and "gaussians.ply" in message and "fingerprint" in message


def test_a_field_from_another_scene_is_refused_in_one_line(copy_scene, tmp_path):
    from fmsplat.fields import load_field

    _lift(copy_scene)
    other = tmp_path / "other"
    shutil.copytree(copy_scene, other, ignore=shutil.ignore_patterns("fields"))
    ws = Workspace.open(other)
    g = ws.gaussians
    with torch.no_grad():
        g.means += 0.01  # another scene: other Gaussians, trained and committed as its own
    ws.write_scene(g, ws.meta, json.loads(ws.metrics_json.read_text()), ws.dataset)
    assert Workspace.open(other).gaussians.fingerprint() == g.fingerprint()
    shutil.copytree(copy_scene / "fields" / "lift", other / "fields" / "lift")
    with pytest.raises(SceneError) as err:
        load_field(other, "lift")
    message = str(err.value)
    assert "\n" not in message and "other Gaussians" in message and "field.json" in message
    assert load_field(copy_scene, "lift").method == "lift"  # in its own scene it loads


def test_scene_json_pointed_at_another_dataset_is_refused_in_one_line(copy_scene, tiny_dataset, tmp_path):
    other = tmp_path / "other_data"
    shutil.copytree(tiny_dataset, other)
    tf = json.loads((other / "transforms.json").read_text())
    tf["frames"][0]["transform_matrix"][0][3] += 0.5  # another capture: one pose differs
    (other / "transforms.json").write_text(json.dumps(tf))
    meta_path = Workspace(copy_scene).scene_json
    meta = json.loads(meta_path.read_text())
    meta["data"]["path"] = str(other)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SceneError) as err:
        Workspace.open(copy_scene)
    message = str(err.value)
    assert "\n" not in message and "not the dataset this scene was trained on" in message and "pose_sha256" in message
    meta["data"]["path"] = str(tiny_dataset)
    meta_path.write_text(json.dumps(meta))
    assert len(Workspace.open(copy_scene).dataset) == len(tf["frames"])


def test_a_field_whose_files_changed_since_its_manifest_is_refused(copy_scene):
    from fmsplat.fields import load_field

    _lift(copy_scene)
    meta, files = Workspace(copy_scene).read_manifest(Workspace(copy_scene).field_dir("lift"))
    data = bytearray(files["tensors"].read_bytes())
    data[-1] ^= 0xFF
    files["tensors"].write_bytes(bytes(data))
    with pytest.raises(SceneError, match="differs from what field.json records"):
        load_field(copy_scene, "lift")


def test_a_field_with_non_finite_tensors_is_refused_in_one_line(copy_scene):
    """A field whose tensors were rewritten with a NaN and re-committed with a matching manifest (so the
    hashes agree) is refused when loaded, naming the file and the tensor, instead of answering NaN."""
    from fmsplat.fields import load_field

    field_ = _lift(copy_scene)
    tensors = field_.state_tensors()
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel())
    tensors[name].view(-1)[0] = float("nan")
    field_.save(copy_scene)
    with pytest.raises(SceneError, match=f"tensor '{name}' holds 1 non-finite value") as err:
        load_field(copy_scene, "lift")
    assert len(str(err.value).splitlines()) == 1
