"""`fmsplat serve SCENE`: a JSON HTTP API over one loaded scene (FastAPI + uvicorn; OpenAPI page at /docs).

    POST /query   {text, negatives?, space?, view? | camera?, all_parts?, relative?, size?}
                  -> found, score, 3D point, per part its 3D box and Gaussian count; with a view or a camera
                     also the 2D point, the 3D point's projection and the relevancy map (PNG, base64)
    POST /render  {view? | camera?, kind: rgb | depth | relevancy, text? (relevancy), size?} -> image/png
    POST /select  {text, negatives?, space?, all_parts?, relative?} -> the object's Gaussians, a 3DGS PLY
    GET  /scene   methods, spaces, bounds, views (cameras), limits
    GET  /health  liveness

Answers without a view come from the per-Gaussian features (fmsplat.query.Locator.locate): no rendering.
Safe by default: the CLI binds 127.0.0.1; any other host needs a bearer token (--token or FMSPLAT_TOKEN), and when
a token is set every route but /health and the OpenAPI pages requires `Authorization: Bearer <token>`.
Bodies, texts, image sizes and concurrent renders are bounded (Limits); every bad request gets a 4xx JSON
error {"error": <kind>, "message": <what is wrong>}, never a traceback. Nothing here writes into the scene.

The query layer (SceneQuery and its caches) is not thread-safe: every call into it holds one lock
(`SceneService.lock`).
"""

from __future__ import annotations

import base64
import hmac
import io
import ipaddress
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence

import numpy as np
import torch
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError,
                      model_validator)

from fmsplat.errors import FmsplatError, UserInputError
from fmsplat.query.parts import LOCATE_RELATIVE

TOKEN_ENV = "FMSPLAT_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class Limits:
    max_body_bytes: int = 64 * 1024  # request bodies (a camera and a phrase are far below this)
    max_text_chars: int = 200  # per phrase (fmsplat.query.MAX_TEXT_LENGTH)
    max_negatives: int = 16
    max_image_side: int = 2048  # px, width or height of a rendered view
    max_image_pixels: int = 1024 * 1024  # width x height of a rendered view
    max_renders: int = 2  # renders running or waiting at once; more get 503 at once
    render_wait_s: float = 60.0  # how long a render waits for the engine before 503


class ApiError(Exception):
    """A request the server refuses: HTTP `status`, a short `kind`, a message naming the problem."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if not is_loopback(host) and not token:
        raise UserInputError(f"--host {host} exposes the scene beyond this machine: set a bearer token with "
                             f"--token or the {TOKEN_ENV} environment variable")


# ------------------------------------------------------------------------------------------ request checks
# Every body is checked here, at the edge, so that nothing the engine cannot take reaches it (a 4xx, never a 500):
# numbers finite and within physical ranges, integers and booleans strict (JSON `true` is not 1), poses rigid,
# texts valid Unicode, view names printable (they go into a response header).
MAX_PX = 1e5  # focal lengths and principal points, px: a 2048-px view at 1e5 px focal already sees only ~1 degree
MAX_TRANSLATION = 1e6  # scene units: scenes span a few units; farther is a unit mistake, not a camera

Real = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Pixels = Annotated[float, Field(strict=True, gt=0, le=MAX_PX)]
Count = Annotated[int, Field(strict=True, ge=1)]


def _unicode(text: str) -> str:
    try:  # JSON may escape a lone surrogate ("\ud800"); no tokenizer can encode one
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (it holds a lone surrogate)") from None
    return text


def _printable(name: str) -> str:
    if not name.isprintable():
        raise ValueError("must be printable (no control characters such as CR or LF)")
    return name


Phrase = Annotated[str, AfterValidator(_unicode)]
ViewName = Annotated[str, Field(max_length=64), AfterValidator(_printable)]


def _intrinsics(K: list[list[float]]) -> list[list[float]]:
    (fx, skew, cx), (zero, fy, cy), last = K
    if skew or zero or last != [0.0, 0.0, 1.0]:
        raise ValueError("must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    for name, v in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)):
        if not 0 < v <= MAX_PX:
            raise ValueError(f"{name} must be in (0, {MAX_PX:g}] px, got {v:g}")
    return K


def _rigid(T: list[list[float]]) -> list[list[float]]:
    m = np.asarray(T, dtype=np.float64)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise ValueError(f"last row must be [0, 0, 0, 1] (a rigid transform), got {m[3].tolist()}")
    R = m[:3, :3]  # entries of a rotation are within [-1, 1]: checked first, so that R @ R.T cannot overflow
    if np.abs(R).max() > 1 + 1e-3 or not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or abs(np.linalg.det(R) - 1) > 1e-3:
        raise ValueError("its 3x3 rotation is not a rotation (orthonormal, det +1)")
    if np.abs(m[:3, 3]).max() > MAX_TRANSLATION:  # not the norm: its square overflows
        raise ValueError(f"its translation is over {MAX_TRANSLATION:g} scene units")
    return T


def _matrix(n: int, check):
    row = Annotated[list[Real], Field(min_length=n, max_length=n)]
    return Annotated[list[row], Field(min_length=n, max_length=n), AfterValidator(check)]


class CameraSpec(BaseModel):
    """A JSON camera: {width, height, K (3x3) | fx, fy, cx?, cy?, viewmat (4x4 world-to-camera, OpenCV) |
    c2w (4x4 camera-to-world), convention: opencv | opengl (of c2w), name?}."""

    model_config = ConfigDict(extra="forbid")
    width: Count
    height: Count
    K: Optional[_matrix(3, _intrinsics)] = None
    fx: Optional[Pixels] = None
    fy: Optional[Pixels] = None
    cx: Optional[Pixels] = Field(None, description="default: width / 2")
    cy: Optional[Pixels] = Field(None, description="default: height / 2")
    viewmat: Optional[_matrix(4, _rigid)] = None
    c2w: Optional[_matrix(4, _rigid)] = None
    convention: Literal["opencv", "opengl"] = "opencv"
    name: ViewName = "camera"

    @model_validator(mode="after")
    def _one_of_each(self) -> "CameraSpec":
        pinhole = (self.fx, self.fy, self.cx, self.cy)
        if self.K is not None and any(v is not None for v in pinhole):
            raise ValueError("give K or fx, fy (cx, cy), not both")
        if self.K is None and (self.fx is None or self.fy is None):
            raise ValueError("needs K (3x3) or fx and fy")
        if (self.viewmat is None) == (self.c2w is None):
            raise ValueError("needs exactly one pose: viewmat (world-to-camera) or c2w")
        if self.viewmat is not None and self.convention != "opencv":
            raise ValueError("viewmat is OpenCV world-to-camera; 'opengl' applies to c2w")
        return self


def _problems(problems: Sequence[dict], root: tuple = ()) -> str:
    """Pydantic's errors in one line, each naming its field ('camera.fx: ...')."""
    def where(p):
        return ".".join(str(x) for x in (*root, *p.get("loc", ())) if x != "body") or "body"

    return "; ".join(f"{where(p)}: {str(p.get('msg', '')).removeprefix('Value error, ')}" for p in problems[:5])


def parse_camera(spec, limits: Limits):
    """A fmsplat Camera from a JSON camera (a dict or a CameraSpec)."""
    from fmsplat.scene.cameras import GL_TO_CV, Camera

    try:
        c = spec if isinstance(spec, CameraSpec) else CameraSpec.model_validate(spec)
    except ValidationError as err:
        raise ApiError(422, "bad_camera", _problems(err.errors(), ("camera",))) from None
    check_size(c.width, c.height, limits, "camera")
    if c.K is not None:
        K = np.asarray(c.K, dtype=np.float64)
    else:
        cx, cy = c.width / 2 if c.cx is None else c.cx, c.height / 2 if c.cy is None else c.cy
        K = np.array([[c.fx, 0, cx], [0, c.fy, cy], [0, 0, 1]], dtype=np.float64)
    if c.viewmat is not None:
        viewmat = np.asarray(c.viewmat, dtype=np.float64)
    else:
        c2w = np.asarray(c.c2w, dtype=np.float64)
        viewmat = np.linalg.inv(c2w @ GL_TO_CV if c.convention == "opengl" else c2w)
    return Camera(K=K, viewmat=viewmat, width=c.width, height=c.height, name=c.name)


def check_size(w, h, limits: Limits, what: str) -> None:
    if w > limits.max_image_side or h > limits.max_image_side or w * h > limits.max_image_pixels:
        raise ApiError(413, "image_too_large", f"{what}: {w}x{h} is over the limit ({limits.max_image_side} px a "
                                               f"side, {limits.max_image_pixels} pixels)")


def header_value(text: str) -> str:
    """`text` as a header value: printable ASCII only (a CR/LF would end the header, and h11 drops the reply)."""
    return "".join(c if c.isprintable() else "?" for c in text).encode("ascii", "replace").decode()


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def relevancy_png(rel: np.ndarray) -> bytes:
    """The relevancy map colour-mapped on the fixed 0.5..1 scale (fmsplat.pictures)."""
    from fmsplat.pictures import colormap

    return png_bytes((np.clip(colormap(rel), 0, 1) * 255 + 0.5).astype(np.uint8))


# ------------------------------------------------------------------------------------------ the scene
class SceneService:
    """One loaded scene (fmsplat.query.SceneQuery, with its variants for other spaces/negatives), behind one lock."""

    def __init__(self, sq, limits: Limits | None = None, edits=None) -> None:
        from fmsplat.fields import saved_methods

        self.sq = sq
        # POST /edit writes here, never into the served scene: a client names a folder, not a path
        self.edits = Path(edits) if edits is not None else sq.root.parent / f"{sq.root.name}.edits"
        self.limits = limits or Limits()
        self.lock = threading.Lock()
        self.renders = threading.BoundedSemaphore(self.limits.max_renders)
        self.methods = saved_methods(sq.root)
        means = sq.field.gaussians.means.detach().double()
        self.bounds = {"min": means.min(0).values.tolist(), "max": means.max(0).values.tolist(),
                       "p1": torch.quantile(means, 0.01, dim=0).tolist(), "p99": torch.quantile(means, 0.99, dim=0).tolist()}
        self.started = time.time()
        self.warm_ms: float | None = None

    @classmethod
    def open(cls, scene, method: str | None = None, space: str | None = None, data: str | None = None,
             limits: Limits | None = None, warm: bool = True, edits=None) -> "SceneService":
        from fmsplat.query import SceneQuery

        service = cls(SceneQuery.open(scene, method=method, space=space, data=data), limits, edits)
        if warm:
            service.warm()
        return service

    def warm(self) -> None:
        """Load the text encoder and the presence vocabulary now (the first query would otherwise pay it)."""
        t0 = time.perf_counter()
        with self.lock:
            self.sq.locator.locate("object")
        self.warm_ms = 1e3 * (time.perf_counter() - t0)

    # -- spaces and negatives
    def language_spaces(self) -> list[str]:
        return [a for a, s in self.sq.field.spaces.items() if s.language_aligned]

    def asked(self, space: str | None, negatives: Sequence[str] | None):
        """The scene's SceneQuery for a request's space and negatives (None: the scene's own), checked."""
        space = space or self.sq.core.space
        if space not in self.sq.field.spaces:
            raise ApiError(400, "unknown_space", f"space {space!r} is not in this field; its language-aligned spaces: "
                                                 f"{self.language_spaces()}")
        if space not in self.language_spaces():
            raise ApiError(400, "unknown_space", f"space {space!r} is not language-aligned; text queries need one of "
                                                 f"{self.language_spaces()}")
        return self.sq.variant(space, negatives)

    def check_text(self, text, what: str = "text") -> str:
        if not isinstance(text, str) or not text.strip():
            raise ApiError(422, "bad_text", f"{what} is empty")
        if len(text) > self.limits.max_text_chars:
            raise ApiError(422, "bad_text", f"{what} has {len(text)} characters; at most "
                                            f"{self.limits.max_text_chars} are allowed")
        return text

    def check_negatives(self, negatives) -> list[str] | None:
        if negatives is None:
            return None
        if not negatives:
            raise ApiError(422, "bad_negatives", "negatives is empty; leave it out for the canonical ones")
        if len(negatives) > self.limits.max_negatives:
            raise ApiError(422, "bad_negatives", f"{len(negatives)} negatives; at most {self.limits.max_negatives}")
        return [self.check_text(n, f"negatives[{i}]") for i, n in enumerate(negatives)]

    def camera_for(self, view: int | None, camera: dict | None, size: list[int] | None):
        """(camera, size (w, h), view name, view index or None) for a request."""
        if view is not None and camera is not None:
            raise ApiError(422, "bad_request", "give a view or a camera, not both")
        if camera is not None:
            cam = parse_camera(camera, self.limits)
            name, index = cam.name, None
        else:
            n = len(self.sq.dataset)
            if isinstance(view, bool) or not isinstance(view, (int, type(None))):
                raise ApiError(422, "unknown_view", f"view must be an integer index, got {view!r}")
            if view is None or not 0 <= view < n:
                raise ApiError(404 if view is not None else 422, "unknown_view",
                               f"view {view} does not exist (the scene has {n} views, 0-{n - 1})" if view is not None
                               else "give a view (index) or a camera")
            cam, name, index = self.sq.dataset.cameras[view], self.sq.bundle.view_name(view), view
        if size is not None:
            if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
                raise ApiError(422, "bad_size", f"size must be [width, height] of positive integers, got {size}")
            w, h = size
        else:
            w, h = cam.width, cam.height
        check_size(w, h, self.limits, "size")
        return cam, (w, h), name, index

    def render_slot(self):
        """A context that holds one of the `max_renders` render slots, or raises 503 when all are taken."""
        service = self

        class _Slot:
            def __enter__(self_):
                if not service.renders.acquire(blocking=False):
                    raise ApiError(503, "busy", f"{service.limits.max_renders} renders are already running or "
                                                "waiting; retry shortly", {"Retry-After": "1"})
                if not service.lock.acquire(timeout=service.limits.render_wait_s):
                    service.renders.release()
                    raise ApiError(503, "busy", "the engine stayed busy too long; retry shortly", {"Retry-After": "1"})

            def __exit__(self_, *exc):
                service.lock.release()
                service.renders.release()

        return _Slot()

    # -- routes' work
    def query(self, req: dict) -> dict:
        text = self.check_text(req.get("text"))
        negatives = self.check_negatives(req.get("negatives"))
        relative = req.get("relative", LOCATE_RELATIVE)
        with_view = req.get("view") is not None or req.get("camera") is not None
        cam_info = self.camera_for(req.get("view"), req.get("camera"), req.get("size")) if with_view else None
        t0 = time.perf_counter()
        want_object = bool(req.get("object", False))
        whole = None
        if not with_view:
            with self.lock:
                sq = self.asked(req.get("space"), negatives)
                answer = sq.locator.locate(text, all_parts=bool(req.get("all_parts", False)), relative=relative)
                if want_object and answer.found:
                    whole = sq.whole_object(answer)
            out = {"answer": answer.to_json()}
        else:
            cam, size, name, index = cam_info
            with self.render_slot():
                sq = self.asked(req.get("space"), negatives)
                answer = sq.locator.locate(text, all_parts=bool(req.get("all_parts", False)), relative=relative)
                result = sq.views.in_view(cam, answer, size=size, view=name)
                if want_object and answer.found:
                    whole = sq.whole_object(answer)
                    object_mask = sq.views.selection_masks(cam, whole, size)[0]
            r = result.to_json()
            out = {"answer": r.pop("answer_3d"), "view": {
                "index": index, "name": name, "size": list(size), "pixel": {"x": result.pixel[0], "y": result.pixel[1]},
                "score_2d": r["location_2d"]["relevancy"], "projection": r["projection"], "empty_view": r["empty_view"],
                "mask_pixels": r["mask_pixels"], "lifted": r["location_3d"]["lifted"],
                "relevancy_range": r["location_2d"]["relevancy_range"], "relevancy_scale": [0.5, 1.0],
                "relevancy_png": base64.b64encode(relevancy_png(result.relevancy)).decode("ascii"),
                "timing_ms": r["timing_ms"]}}
        a = out["answer"]
        best = a["parts"][0] if a["parts"] else None
        out.update({"text": text, "space": answer.space, "negatives": list(sq.core.negatives), "found": a["found"],
                    "score": a["score"], "point": a["point"],
                    "box": None if best is None else best["box"], "gaussians": None if best is None else best["gaussians"],
                    "ms": round(1e3 * (time.perf_counter() - t0), 3)})
        if want_object:  # null when the phrase is not found: there is no object to grow
            out["object"] = None
            if whole is not None:
                means = sq.field.gaussians.means.detach()[whole]
                out["object"] = {"gaussians": int(whole.sum()),
                                 "box": [means.min(0).values.tolist(), means.max(0).values.tolist()]}
                if with_view:
                    out["view"]["object_mask_pixels"] = int(object_mask.sum())
                    out["view"]["object_mask_png"] = base64.b64encode(
                        png_bytes(object_mask.astype(np.uint8) * 255)).decode("ascii")
            out["ms"] = round(1e3 * (time.perf_counter() - t0), 3)
        return out

    def render(self, req: dict) -> tuple[bytes, dict]:
        from fmsplat.fields.base import camera_at
        from fmsplat.render.rgb import render_image

        kind = req.get("kind", "rgb")
        if kind not in ("rgb", "depth", "relevancy"):
            raise ApiError(422, "bad_kind", f"kind must be 'rgb', 'depth' or 'relevancy', got {kind!r}")
        text = self.check_text(req.get("text"), "text (needed for kind 'relevancy')") if kind == "relevancy" else None
        negatives = self.check_negatives(req.get("negatives"))
        cam, size, name, _ = self.camera_for(req.get("view"), req.get("camera"), req.get("size"))
        cam = camera_at(cam, size)
        headers = {"X-Fmsplat-View": header_value(name), "X-Fmsplat-Kind": kind}
        with self.render_slot():
            if kind == "rgb":
                img = render_image(self.sq.field.gaussians, cam, self.sq.bundle.background())
                data = png_bytes((img * 255 + 0.5).astype(np.uint8))
            elif kind == "depth":
                res = self.sq.views.render(cam)
                depth = res.depth.detach().cpu().numpy().astype(np.float64)
                depth[(res.alpha.detach().cpu().numpy() < 0.5) | ~np.isfinite(depth)] = 0.0
                data = png_bytes(np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16))
                headers["X-Fmsplat-Depth-Unit"] = "0.001 scene units (uint16 PNG), 0 = nothing rendered"
            else:
                rel = self.asked(req.get("space"), negatives).views.relevancy_map(cam, text).detach().cpu().numpy()
                data = relevancy_png(rel)
                headers["X-Fmsplat-Relevancy-Scale"] = "0.5..1"
        return data, headers

    def select(self, req: dict) -> tuple[bytes, dict]:
        from fmsplat.query import export_selection, slugify

        text = self.check_text(req.get("text"))
        negatives = self.check_negatives(req.get("negatives"))
        with self.lock:
            asked = self.asked(req.get("space"), negatives)
            answer = asked.locator.locate(text, all_parts=bool(req.get("all_parts", False)),
                                    relative=req.get("relative", LOCATE_RELATIVE))
        if not answer.found and not req.get("export_absent", False):
            score = None if answer.presence is None else round(answer.presence.score, 4)
            raise ApiError(404, "not_found", f"{text!r} is not in the scene (score {score}); set export_absent to "
                                             "download the best guess anyway")
        with tempfile.TemporaryDirectory(prefix="fmsplat-select-") as tmp:  # never inside the scene
            path = Path(tmp) / "selection.ply"
            with self.lock:
                whole = req.get("whole", True) and answer.found
                count = export_selection(asked.field, asked.whole_object(answer) if whole else answer.selection, path)
            data = path.read_bytes()
        headers = {"Content-Disposition": header_value(f'attachment; filename="{slugify(text)}.ply"'),
                   "X-Fmsplat-Gaussians": str(count), "X-Fmsplat-Found": str(answer.found).lower()}
        return data, headers

    def edit(self, req: dict) -> dict:
        """A new scene under the edits folder without (or with only) the Gaussians of the phrase's answer."""
        from fmsplat.query.edit import edit_scene

        text = self.check_text(req.get("text"))
        out = self.edits / req["name"]
        if out.exists():
            raise ApiError(409, "exists", f"an edit named {req['name']!r} exists; choose another name")
        t0 = time.perf_counter()
        with self.lock:
            try:
                record = edit_scene(self.sq, text, out, mode=req.get("mode", "remove"),
                                    all_parts=bool(req.get("all_parts", False)))
            except UserInputError as err:
                raise ApiError(422, "not_edited", str(err)) from None
        record.pop("source", None)  # the server's own paths stay its own
        return {**record, "out": req["name"], "elapsed_ms": round(1e3 * (time.perf_counter() - t0), 3)}

    def inventory(self) -> dict:
        """What is in the scene (fmsplat.query.inventory), computed on the first request and kept."""
        with self.lock:
            t0 = time.perf_counter()
            inv = self.sq.inventory()
            return {**inv.to_json(), "elapsed_ms": round(1e3 * (time.perf_counter() - t0), 3)}

    def scene(self) -> dict:
        ds = self.sq.dataset
        test = set(getattr(ds, "test_indices", []) or [])
        views = [{"index": i, "name": self.sq.bundle.view_name(i), "split": "test" if i in test else "train",
                  "width": c.width, "height": c.height, "K": c.K.tolist(), "viewmat": c.viewmat.tolist()}
                 for i, c in enumerate(ds.cameras)]
        spaces = [{"alias": a, "name": s.name, "dim": s.dim, "language_aligned": bool(s.language_aligned),
                   "default": a == self.sq.core.space} for a, s in self.sq.field.spaces.items()]
        return {"scene": self.sq.root.name, "method": self.sq.field.method, "methods": self.methods, "spaces": spaces,
                "negatives": list(self.sq.core.negatives), "gaussians": len(self.sq.field.gaussians),
                "bounds": self.bounds, "views": views, "limits": asdict(self.limits)}


# ------------------------------------------------------------------------------------------ the app
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ask(_Strict):
    text: Phrase = Field(description="the phrase, e.g. 'espresso cup'")
    negatives: Optional[list[Phrase]] = Field(None, description="negative phrases (default: the canonical ones)")
    space: Optional[Phrase] = Field(None, description="a language-aligned space of the field (GET /scene)")
    all_parts: StrictBool = False
    relative: float = Field(LOCATE_RELATIVE, strict=True, ge=0.0, le=1.0, allow_inf_nan=False)


class Query(Ask):
    object: StrictBool = Field(False, description="also grow a found answer into its whole object (the Gaussians "
                               "an edit takes): its count and box, and with a view its mask (a greyscale PNG, 255 = the object)")
    view: Optional[StrictInt] = Field(None, description="a dataset view index (GET /scene)")
    camera: Optional[CameraSpec] = None
    size: Optional[tuple[Count, Count]] = Field(None, description="[width, height] of the rendered maps")


class Render(_Strict):
    kind: Literal["rgb", "depth", "relevancy"] = "rgb"
    text: Optional[Phrase] = None
    negatives: Optional[list[Phrase]] = None
    space: Optional[Phrase] = None
    view: Optional[StrictInt] = None
    camera: Optional[CameraSpec] = None
    size: Optional[tuple[Count, Count]] = None


class Select(Ask):
    export_absent: StrictBool = False
    whole: StrictBool = Field(True, description="a found answer's whole object (as `fmsplat query` writes it and an "
                              "edit takes it); false: the answer's own parts")


class Edit(_Strict):
    text: Phrase = Field(description="the phrase whose answer is removed or kept, e.g. 'chair'")
    mode: Literal["remove", "keep"] = "remove"
    all_parts: StrictBool = False
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = Field(
        description="folder of the new scene in the server's edits folder (letters, digits, '_', '-', '.')")


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes (declared or streamed)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = f"the request body is over the {self.limit}-byte limit"
        if declared is not None:
            try:
                too_large = int(declared) > self.limit
            except ValueError:
                too_large = False
            if too_large:
                return await _send_json(send, 413, {"error": "body_too_large", "message": too_big})
        chunks, seen = [], 0
        while True:  # read the whole body (at most `limit` bytes), then replay it
            msg = await receive()
            if msg["type"] != "http.request":
                return await self.app(scope, receive, send)  # disconnected
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                return await _send_json(send, 413, {"error": "body_too_large", "message": too_big})
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(service: SceneService, token: str | None = None):
    """The FastAPI app over `service`; `token`: the bearer token every route but /health and /docs requires."""
    from fastapi import Body, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="fmsplat", version="1", description=__doc__.split("\n\n")[0])
    open_paths = {"/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}

    def error(status: int, kind: str, message: str, headers: dict | None = None):
        message = message.encode("utf-8", "backslashreplace").decode()  # a lone surrogate echoed back cannot be sent
        return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token and request.url.path not in open_paths:
            got = request.headers.get("authorization", "")
            scheme, _, value = got.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                return error(401, "unauthorized", "this server needs 'Authorization: Bearer <token>'"
                             + (" (the token given is wrong)" if got else ""), {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        return error(err.status, err.kind, err.message, err.headers)

    @app.exception_handler(FmsplatError)
    async def _user_error(request, err: FmsplatError):
        return error(400, "bad_request", str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        problems = err.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            ctx = next(p for p in problems if p.get("type") == "json_invalid").get("ctx", {})
            return error(400, "bad_json", f"the body is not valid JSON ({ctx.get('error', 'parse error')})")
        loc = tuple(problems[0].get("loc", ())) if problems else ()
        kind = {"camera": "bad_camera", "size": "bad_size"}.get(loc[1] if len(loc) > 1 else None, "invalid_request")
        return error(422, kind, _problems(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, err: StarletteHTTPException):
        kind = {404: "no_such_route", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return error(err.status_code, kind, str(err.detail))

    @app.exception_handler(Exception)
    async def _bug(request, err: Exception):  # a bug: logged by uvicorn, never sent as a traceback
        import logging

        logging.getLogger("fmsplat.apps.server").exception("request failed")
        return error(500, "internal_error", f"{type(err).__name__}: the server failed on this request")

    @app.get("/health")
    def health():
        return {"status": "ok", "scene": service.sq.root.name, "method": service.sq.field.method,
                "gaussians": len(service.sq.field.gaussians), "warm_ms": service.warm_ms,
                "uptime_s": round(time.time() - service.started, 3)}

    @app.get("/scene")
    def scene():
        return service.scene()

    @app.get("/inventory")
    def inventory():
        return service.inventory()

    @app.post("/edit")
    def edit(req: Edit = Body(...)):
        return service.edit(req.model_dump())

    @app.post("/query")
    def query(req: Query = Body(...)):
        return service.query(req.model_dump())

    @app.post("/render", response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "the image (PNG)"}})
    def render(req: Render = Body(...)):
        data, headers = service.render(req.model_dump())
        return Response(content=data, media_type="image/png", headers=headers)

    @app.post("/select", response_class=Response,
              responses={200: {"content": {"application/octet-stream": {}}, "description": "3DGS PLY"}})
    def select(req: Select = Body(...)):
        data, headers = service.select(req.model_dump())
        return Response(content=data, media_type="application/octet-stream", headers=headers)

    return BodyLimit(app, service.limits.max_body_bytes) if service.limits.max_body_bytes else app


def make_server(service: SceneService, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                log_level: str = "warning"):
    """A uvicorn.Server for `service` (call .run(), or run it in a thread and set .should_exit)."""
    import uvicorn

    from fmsplat.apps.heap import fix_mmap_threshold

    check_bind(host, token)
    fix_mmap_threshold()  # request threads would otherwise grow the heap with every new phrase (apps.heap)
    config = uvicorn.Config(create_app(service, token), host=host, port=port, log_level=log_level,
                            limit_concurrency=64, timeout_keep_alive=5, access_log=False)
    return uvicorn.Server(config)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, in one line (port 0: any free one)."""
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no obstacle
        try:
            s.bind((host, port))
        except OSError as err:
            raise UserInputError(f"cannot listen on {host}:{port} ({err.strerror or err}); is another server there? "
                                 "choose another --port") from None


def serve(scene, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, method: str | None = None,
          space: str | None = None, data: str | None = None, limits: Limits | None = None,
          log_level: str = "info", edits=None) -> None:
    """Load `scene`, warm the engine, and serve until interrupted."""
    check_bind(host, token)
    check_port_free(host, port)  # before the scene is loaded; uvicorn would print its log and exit
    service = SceneService.open(scene, method=method, space=space, data=data, limits=limits, edits=edits)
    make_server(service, host, port, token, log_level).run()


__all__ = ["ApiError", "Limits", "SceneService", "TOKEN_ENV", "check_bind", "check_port_free", "create_app", "is_loopback",
           "make_server", "parse_camera", "serve"]
