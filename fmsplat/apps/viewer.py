"""`fmsplat view SCENE`: a web viewer (viser) that answers text queries in place.

The trained Gaussians are drawn by the browser (viser's Gaussian splats, WebGL); the questions go to the
same query layer as `fmsplat query` and `fmsplat serve` (fmsplat.query.SceneQuery):

- a text box for the phrase and one for the negatives: each change asks again (3D answer from the
  per-Gaussian features, no rendering); the selected Gaussians turn magenta (HIGHLIGHT), a sphere marks
  the 3D point (green: found, red: not found), the panel says found / not found and the score;
- a threshold slider (the candidate cut `relative` of fmsplat.query.Locator.locate);
- the dataset cameras as frusta: a click moves the browser's camera there and shows that view's 2D
  relevancy, rendered by fmsplat's own rasterizer, in the panel ("Relevancy of this view" renders the
  browser's current camera);
- "Save selection" writes the selected object's Gaussians as a 3DGS PLY (default: SCENE/selections/);
- "Remove from scene" and "Keep only this" write a new scene without the answer's Gaussians, or with only
  them (fmsplat.query.edit, as `fmsplat edit`), under SCENE.edits/ beside the scene; the scene shown is
  never changed.

viser has no authentication: the viewer listens on 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from fmsplat.errors import UserInputError
from fmsplat.gaussians.sh import sh_to_rgb
from fmsplat.query.parts import LOCATE_RELATIVE
from fmsplat.render.projection import quat_to_rotmat
from fmsplat.scene.cameras import up_direction

HIGHLIGHT = (255, 0, 255)  # colour of the selected Gaussians (pure magenta: nothing in a scene looks like it)


def _rotmat_to_wxyz(R: np.ndarray) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3.from_matrix(R).wxyz


def splat_arrays(gaussians) -> dict[str, np.ndarray]:
    """centers, covariances, rgbs (0..1, the SH DC colour) and opacities (N, 1) for viser."""
    with torch.no_grad():
        means, quats, scales, opacities = (t.detach().cpu().double() for t in gaussians.activated())
        R = quat_to_rotmat(quats).numpy()
        rgbs = sh_to_rgb(gaussians.sh[:, 0, :].detach().cpu().double()).clamp(0, 1).numpy()
    means, scales, opacities = means.numpy(), scales.numpy(), opacities.numpy()
    cov = R @ (scales[:, :, None] ** 2 * np.transpose(R, (0, 2, 1)))
    return {"centers": means.astype(np.float32), "covariances": cov.astype(np.float32),
            "rgbs": rgbs.astype(np.float32),
            "opacities": opacities.reshape(-1, 1).astype(np.float32)}


class Viewer:
    """The viser server of one scene. Query calls hold `self.lock` (SceneQuery is not thread-safe)."""

    def __init__(self, sq, host: str = "127.0.0.1", port: int = 8080, out=None, start_view: int | None = None) -> None:
        import viser

        self.sq = sq
        self.lock = threading.Lock()
        self.out = Path(out) if out is not None else sq.root / "selections"
        self.edits = sq.root.parent / f"{sq.root.name}.edits"
        self.answer = None
        self.answer_ms: float | None = None
        self.current_view = sq.view_index(start_view)
        check_loopback(host)
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.port = self.server.get_port()
        self.arrays = splat_arrays(sq.field.gaussians)
        cams = sq.dataset.cameras
        self.server.scene.set_up_direction(tuple(up_direction(cams)))
        self.splats = self._add_splats(self.arrays["rgbs"])
        self.marker = None
        self._frusta(cams)
        self._gui()
        self.server.on_client_connect(self._on_connect)

    # -- scene
    def _add_splats(self, rgbs):
        a = self.arrays
        return self.server.scene.add_gaussian_splats("/gaussians", centers=a["centers"], covariances=a["covariances"],
                                                     rgbs=rgbs, opacities=a["opacities"])

    def _frusta(self, cams) -> None:
        scale = 0.03 * float(np.linalg.norm(self.arrays["centers"].max(0) - self.arrays["centers"].min(0)))
        for i, cam in enumerate(cams):
            c2w = cam.c2w
            fr = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=2 * np.arctan2(cam.height / 2, cam.fy), aspect=cam.width / cam.height,
                scale=scale, thickness=0.02 * scale, wxyz=_rotmat_to_wxyz(c2w[:3, :3]), position=c2w[:3, 3],
                color=(90, 90, 90))
            fr.on_click(lambda event, i=i: self.jump_to(i, event.client))

    def _gui(self) -> None:
        gui = self.server.gui
        self.status = gui.add_markdown("Type what to look for.")
        self.text = gui.add_text("Phrase", "", hint="e.g. espresso cup")
        self.negatives = gui.add_text("Negatives", ",".join(self.sq.core.negatives),
                                      hint="comma-separated phrases the answer must beat")
        self.threshold = gui.add_slider("Threshold", 0.0, 1.0, 0.05, LOCATE_RELATIVE,
                                        hint="candidate cut: fraction of the way from the lowest to the highest relevancy")
        self.save = gui.add_button("Save selection (PLY)", disabled=True)
        self.remove_btn = gui.add_button("Remove from scene (new scene)", disabled=True)
        self.keep_btn = gui.add_button("Keep only this (new scene)", disabled=True)
        self.render_btn = gui.add_button("Relevancy of this view")
        self.image = gui.add_image(np.zeros((48, 64, 3), np.uint8), label="2D relevancy (fmsplat rasterizer)")
        self.text.on_update(lambda _: self.ask())
        self.negatives.on_update(lambda _: self.ask())
        self.threshold.on_update(lambda _: self.ask())
        self.save.on_click(lambda _: self.save_selection())
        self.remove_btn.on_click(lambda _: self.edit("remove"))
        self.keep_btn.on_click(lambda _: self.edit("keep"))
        self.render_btn.on_click(lambda event: self.show_relevancy(self._client_camera(event.client)))

    def _on_connect(self, client) -> None:
        self._set_client_camera(client, self.sq.dataset.cameras[self.current_view])

    # -- cameras
    def _set_client_camera(self, client, cam) -> None:
        c2w = cam.c2w
        target = c2w[:3, 3] + c2w[:3, 2] * max(1e-3, float(np.linalg.norm(c2w[:3, 3] - self.arrays["centers"].mean(0))))
        with client.atomic():
            client.camera.fov = float(2 * np.arctan2(cam.height / 2, cam.fy))
            client.camera.position = c2w[:3, 3]
            client.camera.look_at = target
            client.camera.wxyz = _rotmat_to_wxyz(c2w[:3, :3])

    def _client_camera(self, client, width: int = 160):
        """A fmsplat Camera (OpenCV) of what the browser shows, `width` pixels wide."""
        from fmsplat.scene.cameras import Camera

        if client is None:
            return self.sq.dataset.cameras[self.current_view]
        import viser.transforms as vtf

        R = vtf.SO3(np.asarray(client.camera.wxyz)).as_matrix()
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = R, np.asarray(client.camera.position)
        aspect = float(client.camera.aspect) or 4 / 3
        h = max(8, int(round(width / aspect)))
        f = (h / 2) / np.tan(float(client.camera.fov) / 2)
        K = np.array([[f, 0, width / 2], [0, f, h / 2], [0, 0, 1]])
        return Camera(K=K, viewmat=np.linalg.inv(c2w), width=width, height=h, name="browser")

    def jump_to(self, i: int, client=None) -> None:
        self.current_view = i
        cam = self.sq.dataset.cameras[i]
        for c in ([client] if client is not None else self.server.get_clients().values()):
            self._set_client_camera(c, cam)
        self.show_relevancy(cam)

    # -- questions
    def ask(self) -> None:
        text = self.text.value.strip()
        if not text:
            return
        negs = tuple(n.strip() for n in self.negatives.value.split(",") if n.strip()) or None
        try:
            t0 = time.perf_counter()
            with self.lock:
                asked = self.sq.variant(negatives=negs)
                answer = asked.ask(text, relative=float(self.threshold.value))
            self.answer_ms = 1e3 * (time.perf_counter() - t0)
        except Exception as err:  # a bad phrase: say so in the panel, keep the viewer alive
            self.status.content = f"**error**: {err}"
            return
        self.answer, self._answer_views = answer, asked.views
        self.show_answer()
        self.show_relevancy(self.sq.dataset.cameras[self.current_view])

    def show_answer(self) -> None:
        a = self.answer
        rgbs = self.arrays["rgbs"].copy()
        if a.found:  # the whole object, as an edit would take it (SceneQuery.whole_object)
            with self.lock:
                sel = self.sq.whole_object(a).numpy()
        else:
            sel = a.selection.mask.numpy()
        rgbs[sel] = np.array(HIGHLIGHT, np.float32) / 255.0
        self.splats.remove()
        self.splats = self._add_splats(rgbs)
        colour = (40, 220, 40) if a.found else (230, 40, 40)
        size = float(np.linalg.norm(a.parts[0].box_max - a.parts[0].box_min))
        if self.marker is not None:
            self.marker.remove()
        self.marker = self.server.scene.add_icosphere("/answer/point", radius=max(0.02, 0.06 * size), color=colour,
                                                      position=tuple(float(v) for v in a.point))
        state = "FOUND" if a.found else "NOT FOUND"
        self.status.content = (f"**{state}** '{a.text}': score {a.presence.score:.2f}, "
                               f"{a.selection.count} Gaussians answer"
                               + (f", {int(sel.sum())} the whole object" if a.found else "")
                               + f", {self.answer_ms:.0f} ms")
        self.save.disabled = not a.selection.count
        self.remove_btn.disabled = self.keep_btn.disabled = not a.found

    def show_relevancy(self, camera) -> None:
        """The 2D relevancy of `camera`, rendered by fmsplat, over its RGB render, in the panel."""
        if self.answer is None:
            return
        from fmsplat.fields.base import camera_at
        from fmsplat.pictures import relevancy_overlay
        from fmsplat.render.rgb import render_image

        if camera.width > 200:
            camera = camera_at(camera, (200, max(8, round(200 * camera.height / camera.width))))
        with self.lock:
            rel = self._answer_views.relevancy_map(camera, self.answer.text).detach().cpu().numpy()
            rgb = render_image(self.sq.field.gaussians, camera, self.sq.bundle.background())
        self.image.image = relevancy_overlay(rgb, rel)

    def save_selection(self) -> Path | None:
        if self.answer is None or not self.answer.selection.count:
            return None
        from fmsplat.query import slugify

        path = self.out / f"{slugify(self.answer.text)}.ply"
        with self.lock:
            n = self.sq.export(self.answer, path)
        self.status.content += f"  \nsaved {n} Gaussians: `{path}`"
        return path

    def edit(self, mode: str) -> Path | None:
        """A new scene without (remove) or with only (keep) the current answer's Gaussians, under SCENE.edits/."""
        if self.answer is None or not self.answer.found:
            return None
        from fmsplat.query import slugify
        from fmsplat.query.edit import edit_scene

        stem = f"{slugify(self.answer.text)}-{'removed' if mode == 'remove' else 'kept'}"
        out, k = self.edits / stem, 2
        while out.exists():
            out, k = self.edits / f"{stem}-{k}", k + 1
        try:
            with self.lock:
                record = edit_scene(self.sq, self.answer.text, out, mode=mode, answer=self.answer)
        except Exception as err:  # say so in the panel, keep the viewer alive
            self.status.content += f"  \n**edit failed**: {err}"
            return None
        self.status.content += (f"  \n{mode}: {record['gaussians_before']} -> {record['gaussians_after']} Gaussians, "
                                f"new scene `{out}` (fmsplat view {out})")
        return out

    def stop(self) -> None:
        self.server.stop()


def check_loopback(host: str) -> None:
    """Refuse any host but loopback: viser has no authentication, so the viewer cannot take a token as
    `fmsplat serve` does; a remote user reaches it through an SSH tunnel instead."""
    from fmsplat.apps.server import is_loopback

    if not is_loopback(host):
        raise UserInputError(f"--host {host} would expose the viewer beyond this machine, and viser has no "
                             f"authentication; keep 127.0.0.1 and tunnel to it (ssh -L 8080:127.0.0.1:8080 HOST)")


def run_viewer(scene, host: str = "127.0.0.1", port: int = 8080, method: str | None = None, space: str | None = None,
               out=None) -> None:
    from fmsplat.query import SceneQuery

    from fmsplat.apps.heap import fix_mmap_threshold

    check_loopback(host)  # before the scene is loaded
    fix_mmap_threshold()  # viser answers on its own threads (apps.heap)
    sq = SceneQuery.open(scene, method=method, space=space)
    sq.ask("object")  # load the text encoder and vocabulary before the first visitor
    viewer = Viewer(sq, host, port, out)
    print(f"fmsplat view: http://{host}:{viewer.port}/ (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        viewer.stop()


__all__ = ["HIGHLIGHT", "Viewer", "run_viewer", "splat_arrays"]
