"""fmsplat.query: text queries on any feature field — relevancy maps, 2D/3D localisation, masks,
Gaussian selection (fmsplat.query.engine), pictures of the answers (fmsplat.pictures).

Names load lazily, so that `fmsplat.query.segment` / `.relevancy` (pure array code, used by
fmsplat.eval.metrics) do not pull in the field and rendering stack.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CANONICAL_NEGATIVES": "relevancy", "relevancy": "relevancy",
    "argmax_pixel": "segment", "langsplat_segmentation": "segment",
    "Presence": "presence", "Concept": "presence", "presence": "presence", "describe": "presence",
    "vocabulary_for": "presence", "SceneQuery": "command", "run_query": "command",
    **{name: "engine" for name in (
        "Answer", "Part", "QueryEngine", "QueryResult", "Selection", "clear_text_cache", "export_selection", "gaussian_point",
        "lift_pixel", "localize_2d", "localize_3d", "relevancy_map", "segment_query", "select_gaussians",
        "text_embeddings",
    )},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fmsplat.query' has no attribute {name!r}")
    attr = "segment" if name == "segment_query" else name
    return getattr(importlib.import_module(f"fmsplat.query.{module}"), attr)
