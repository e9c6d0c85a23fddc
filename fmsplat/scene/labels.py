"""Ground-truth labels of a scene: per-view 2D labels (LERF-OVS format) and `objects.json` (3D boxes).

Per-view file `labels/<image stem>.json`::

    {"info": {"width": W, "height": H, "name": "0000.png"},
     "objects": [{"category": "cat", "bbox": [x1, y1, x2, y2],
                  "segmentation": [[x, y, x, y, ...], ...]}, ...]}

Coordinates are pixel indices (pixel (col, row) is the point x=col, y=row), as labelme and
`cv2.fillPoly` use them; `bbox` is inclusive. `segmentation` is a list of flat polygons. The
published LERF-OVS files store one polygon as a list of points (`[[x, y], [x, y], ...]`): the
reader accepts that form too. The polygons of one object combine by the even-odd rule, so an
occluder in front of an object can appear as a hole; objects of the same category combine by union.

`objects.json` lists each object's label, synonyms, instance id and 3D axis-aligned box in world
coordinates, plus scene metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.draw import polygon as _fill_polygon
from skimage.measure import approximate_polygon, find_contours

from fmsplat.atomic import write_json
from fmsplat.errors import FmsplatError


class LabelFormatError(FmsplatError, ValueError):
    """A label or objects file that does not follow the expected format."""


@dataclass
class LabelledObject:
    category: str
    bbox: tuple[float, float, float, float]
    polygons: list[np.ndarray]  # each (K, 2) float, columns x, y

    def mask(self, height: int, width: int) -> np.ndarray:
        return polygons_to_mask(self.polygons, height, width)


@dataclass
class ViewLabels:
    name: str
    width: int
    height: int
    objects: list[LabelledObject] = field(default_factory=list)

    def categories(self) -> list[str]:
        """Distinct categories in order of first appearance."""
        return list(dict.fromkeys(o.category for o in self.objects))

    def mask(self, category: str) -> np.ndarray:
        """Union of the masks of every object of `category` (bool, H x W)."""
        out = np.zeros((self.height, self.width), dtype=bool)
        for o in self.objects:
            if o.category == category:
                out |= o.mask(self.height, self.width)
        return out

    def boxes(self, category: str) -> np.ndarray:
        """(n, 4) inclusive boxes [x1, y1, x2, y2] of every object of `category`."""
        rows = [o.bbox for o in self.objects if o.category == category]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 4)

    def to_json(self) -> dict:
        return {
            "info": {"width": self.width, "height": self.height, "name": self.name},
            "objects": [
                {
                    "category": o.category,
                    "bbox": [float(v) for v in o.bbox],
                    "segmentation": [[round(float(v), 2) for v in p.reshape(-1)] for p in o.polygons],
                }
                for o in self.objects
            ],
        }


# ---------------------------------------------------------------------------------------------
# masks <-> polygons


def polygons_to_mask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise polygons (each (K, 2) x, y) to a bool mask: a pixel is set when its centre lies
    inside an odd number of polygons (so hole outlines cut holes)."""
    mask = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(poly) < 3:
            continue
        rr, cc = _fill_polygon(poly[:, 1], poly[:, 0], shape=(height, width))
        part = np.zeros_like(mask)
        part[rr, cc] = True
        mask ^= part
    return mask


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.5) -> list[np.ndarray]:
    """Outlines of a bool mask as polygons (K, 2) in x, y pixel-index coordinates.

    Contours at level 0.5 run half-way between inside and outside pixel centres, so
    `polygons_to_mask` gives the mask back up to the polygon simplification (`tolerance`, px).
    """
    mask = np.asarray(mask, dtype=bool)
    # Pad so that regions touching the border give closed contours.
    padded = np.pad(mask, 1).astype(np.float32)
    polys = []
    for contour in find_contours(padded, 0.5):
        contour = contour - 1.0  # undo the padding
        if tolerance > 0:
            contour = approximate_polygon(contour, tolerance=tolerance)
        if len(contour) < 3:
            continue
        polys.append(np.ascontiguousarray(contour[:, ::-1]))
    return polys


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive box [x1, y1, x2, y2] of the set pixels; raises on an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask_bbox: the mask is empty")
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def labels_from_instances(
    instances: np.ndarray, id_to_category: dict[int, str], name: str, min_pixels: int = 1, tolerance: float = 0.5
) -> ViewLabels:
    """Build a view's labels from an instance-id image (0 = background)."""
    height, width = instances.shape
    objects = []
    for inst_id, category in id_to_category.items():
        mask = instances == inst_id
        if int(mask.sum()) < min_pixels:
            continue
        objects.append(LabelledObject(category, mask_bbox(mask), mask_to_polygons(mask, tolerance)))
    return ViewLabels(name=name, width=width, height=height, objects=objects)


# ---------------------------------------------------------------------------------------------
# per-view label files


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabelFormatError(f"{where} must be a number, got {value!r}")
    try:
        out = float(value)
    except OverflowError:
        out = float("inf")
    if not np.isfinite(out):
        raise LabelFormatError(f"{where} must be finite, got {value!r}")
    return out


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LabelFormatError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _size(value, where: str) -> int:
    v = _number(value, where)
    if v != int(v) or not 1 <= v <= 65_536:
        raise LabelFormatError(f"{where} must be a whole number of pixels in 1..65536, got {value!r}")
    return int(v)


def _parse_segmentation(seg, path: Path, index: int) -> list[np.ndarray]:
    where = f"{path}: objects[{index}].segmentation"
    if not isinstance(seg, list):
        raise LabelFormatError(f"{where} must be a list, got {type(seg).__name__}")
    if not seg:
        return []
    if all(isinstance(p, list) and len(p) == 2 and not isinstance(p[0], list) for p in seg):
        # Published LERF-OVS form: one polygon as a list of [x, y] points.
        poly = np.array([[_number(v, where) for v in p] for p in seg], dtype=np.float64).reshape(-1, 2)
        if len(poly) < 3:
            raise LabelFormatError(f"{where}: a polygon needs at least 3 points, got {len(poly)}")
        return [poly]
    polys = []
    for k, p in enumerate(seg):
        if not isinstance(p, list):
            raise LabelFormatError(f"{where}[{k}] must be a list, got {p!r}"[:200])
        if all(not isinstance(v, list) for v in p) and len(p) % 2 == 0:
            polys.append(np.array([_number(v, f"{where}[{k}]") for v in p], dtype=np.float64).reshape(-1, 2))  # flat [x, y, ...]
        elif all(isinstance(q, list) and len(q) == 2 for q in p):
            polys.append(np.array([[_number(v, f"{where}[{k}]") for v in q] for q in p], dtype=np.float64).reshape(-1, 2))
        else:
            raise LabelFormatError(f"{where}[{k}]: polygon is neither [x, y, ...] (even length) nor [[x, y], ...]")
        if len(polys[-1]) < 3:
            raise LabelFormatError(f"{where}[{k}]: a polygon needs at least 3 points, got {len(polys[-1])}")
    return polys


def parse_view_labels(data: dict, path: Path) -> ViewLabels:
    if not isinstance(data, dict) or not isinstance(data.get("info"), dict) or not isinstance(data.get("objects"), list):
        raise LabelFormatError(f"{path}: expected an object with 'info' (an object) and 'objects' (a list)")
    info = data["info"]
    for key in ("width", "height", "name"):
        if key not in info:
            raise LabelFormatError(f"{path}: info has no '{key}'")
    width, height = _size(info["width"], f"{path}: info.width"), _size(info["height"], f"{path}: info.height")
    name = _text(info["name"], f"{path}: info.name")
    objects = []
    for i, o in enumerate(data["objects"]):
        if not isinstance(o, dict):
            raise LabelFormatError(f"{path}: objects[{i}] must be an object, got {o!r}"[:200])
        for key in ("category", "bbox", "segmentation"):
            if key not in o:
                raise LabelFormatError(f"{path}: objects[{i}] has no '{key}'")
        category = _text(o["category"], f"{path}: objects[{i}].category")
        box = o["bbox"]
        if not isinstance(box, list) or len(box) != 4:
            raise LabelFormatError(f"{path}: objects[{i}].bbox must have 4 numbers [x1, y1, x2, y2], got {box!r}"[:200])
        bbox = tuple(_number(v, f"{path}: objects[{i}].bbox") for v in box)
        if bbox[2] < bbox[0] or bbox[3] < bbox[1]:
            raise LabelFormatError(f"{path}: objects[{i}].bbox {list(bbox)} has x2 < x1 or y2 < y1")
        polys = _parse_segmentation(o["segmentation"], path, i)
        objects.append(LabelledObject(category, bbox, polys))
    return ViewLabels(name=name, width=width, height=height, objects=objects)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise LabelFormatError(f"{path}: not UTF-8 text ({e})") from e
    except RecursionError:
        raise LabelFormatError(f"{path}: JSON nested too deeply") from None
    except json.JSONDecodeError as e:
        raise LabelFormatError(f"{path}: not valid JSON ({e})") from e


def read_view_labels(path: str | Path) -> ViewLabels:
    path = Path(path)
    return parse_view_labels(_read_json(path), path)


def write_view_labels(path: str | Path, labels: ViewLabels) -> None:
    write_json(path, labels.to_json())


def read_label_dir(dataset_dir: str | Path) -> dict[str, ViewLabels]:
    """All `labels/*.json` of a dataset, keyed by image stem (sorted)."""
    label_dir = Path(dataset_dir) / "labels"
    if not label_dir.is_dir():
        raise FileNotFoundError(f"{label_dir}: no labels directory")
    return {p.stem: read_view_labels(p) for p in sorted(label_dir.glob("*.json"))}


# ---------------------------------------------------------------------------------------------
# objects.json


@dataclass
class SceneObjectInfo:
    instance_id: int
    label: str
    synonyms: list[str]
    aabb_min: np.ndarray  # (3,) world
    aabb_max: np.ndarray  # (3,) world
    extra: dict = field(default_factory=dict)

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (self.aabb_min + self.aabb_max)

    def to_json(self) -> dict:
        return {
            "id": int(self.instance_id),
            "label": self.label,
            "synonyms": list(self.synonyms),
            "aabb": {"min": [float(v) for v in self.aabb_min], "max": [float(v) for v in self.aabb_max]},
            **self.extra,
        }


def write_objects(path: str | Path, objects: list[SceneObjectInfo], scene: dict | None = None) -> None:
    write_json(path, {"scene": scene or {}, "objects": [o.to_json() for o in objects]})


def read_objects(path: str | Path) -> tuple[list[SceneObjectInfo], dict]:
    """Objects and scene metadata of an `objects.json`."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise LabelFormatError(f"{path}: expected an object with an 'objects' list")
    scene = data.get("scene", {})
    if not isinstance(scene, dict):
        raise LabelFormatError(f"{path}: 'scene' must be an object, got {scene!r}"[:200])
    out = []
    ids: set[int] = set()
    for i, o in enumerate(data["objects"]):
        where = f"{path}: objects[{i}]"
        if not isinstance(o, dict):
            raise LabelFormatError(f"{where} must be an object, got {o!r}"[:200])
        for key in ("id", "label", "aabb"):
            if key not in o:
                raise LabelFormatError(f"{where} has no '{key}'")
        if isinstance(o["id"], bool) or not isinstance(o["id"], int) or o["id"] < 1:
            raise LabelFormatError(f"{where}.id must be a whole number >= 1 (0 is the background), got {o['id']!r}")
        if o["id"] in ids:
            raise LabelFormatError(f"{where}.id {o['id']} appears twice")
        ids.add(o["id"])
        label = _text(o["label"], f"{where}.label")
        synonyms = o.get("synonyms", [])
        if not isinstance(synonyms, list) or not all(isinstance(v, str) and v.strip() for v in synonyms):
            raise LabelFormatError(f"{where}.synonyms must be a list of strings, got {synonyms!r}"[:200])
        aabb = o["aabb"]
        if not isinstance(aabb, dict) or not isinstance(aabb.get("min"), list) or not isinstance(aabb.get("max"), list):
            raise LabelFormatError(f"{where}.aabb must be {{'min': [x, y, z], 'max': [x, y, z]}}, got {aabb!r}"[:200])
        lo = np.array([_number(v, f"{where}.aabb.min") for v in aabb["min"]], dtype=np.float64)
        hi = np.array([_number(v, f"{where}.aabb.max") for v in aabb["max"]], dtype=np.float64)
        if lo.size != 3 or hi.size != 3 or np.any(hi < lo):
            raise LabelFormatError(f"{where}.aabb must have min <= max, 3 numbers each")
        extra = {k: v for k, v in o.items() if k not in ("id", "label", "synonyms", "aabb")}
        out.append(SceneObjectInfo(int(o["id"]), label, list(synonyms), lo, hi, extra))
    return out, dict(scene)
