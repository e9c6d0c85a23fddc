"""fmsplat.eval: metrics (fmsplat.eval.metrics), the scene evaluation protocol (`evaluate_scene`) and
Markdown comparison tables (`format_comparison`). Names load lazily: the metrics stay light to import."""

from __future__ import annotations

import importlib

_EXPORTS = {"evaluate_scene": "protocol", "EvalConfig": "protocol", "EvalError": "protocol",
            "score_views": "protocol", "score_objects": "protocol", "format_comparison": "report",
            "scene_report": "report", "load_result": "report"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fmsplat.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fmsplat.eval.{module}"), name)
