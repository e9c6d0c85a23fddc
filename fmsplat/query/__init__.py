"""fmsplat.query: text queries on any feature field.

- `SceneQuery` (fmsplat.query.scene_query): the front door — a fitted scene opened once, asked many times;
- `QueryCore` (fmsplat.query.core): one language-aligned space of a field, its negatives, a bounded text cache;
- `Locator` (fmsplat.query.locate): the 3D answer to a phrase (`locate` -> `Answer`: found, presence,
  point, parts), the one way to a 3D point;
- `ViewQuery` (fmsplat.query.views): per view — relevancy maps, the 2D point, the mask, the projection of
  a 3D answer (`in_view` -> `QueryResult`).

Pictures of the answers are in fmsplat.pictures; `fmsplat query`'s files in fmsplat.apps.query.

Names load lazily, so that `fmsplat.query.segment` / `.relevancy` (pure array code, used by
fmsplat.eval.metrics) do not pull in the field and rendering stack.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CANONICAL_NEGATIVES": "relevancy", "relevancy": "relevancy",
    "argmax_pixel": "segment", "langsplat_segmentation": "segment",
    "Presence": "presence", "Concept": "presence", "presence": "presence", "describe": "presence",
    "vocabulary_for": "presence",
    "QueryCore": "core", "TextCache": "core", "TEXT_CACHE_SIZE": "core",
    **{name: "locate" for name in ("Answer", "Locator", "Part", "Selection", "densest_point", "export_selection")},
    **{name: "views" for name in ("QueryResult", "ViewQuery", "lift_pixel", "localize_2d", "relevancy_map",
                                  "segment_query")},
    **{name: "scene_query" for name in ("MAX_TEXT_LENGTH", "SceneQuery", "check_text", "slugify")},
    **{name: "inventory" for name in ("Inventory", "InventoryObject", "inventory")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fmsplat.query' has no attribute {name!r}")
    attr = "segment" if name == "segment_query" else name
    return getattr(importlib.import_module(f"fmsplat.query.{module}"), attr)
