"""Foundation-model layer: extractors behind one protocol, an on-disk feature cache, the FMGS pyramid.

    from fmsplat.foundation import get_extractor, cosine_similarity
    ex = get_extractor("effnet")                     # embedded, offline default
    feats = ex.encode_images(images)                  # (B, D, h, w), images float [0, 1]
    sim = cosine_similarity(feats, ex.encode_text(["coffee cup"]))   # (B, 1, h, w)
"""

from fmsplat.foundation.base import (
    Extractor,
    LanguageExtractor,
    ModelUnavailableError,
    cosine_similarity,
    to_bchw,
)
from fmsplat.foundation.registry import get_extractor, list_extractors

__all__ = [
    "Extractor",
    "LanguageExtractor",
    "ModelUnavailableError",
    "cosine_similarity",
    "get_extractor",
    "list_extractors",
    "to_bchw",
]
