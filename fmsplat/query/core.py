"""The core shared by the 3D locator (fmsplat.query.locate) and the per-view queries (fmsplat.query.views):
one language-aligned space of one field, the negatives of the LERF relevancy, and a bounded cache of
text embeddings.

    core = QueryCore(field)                  # space: field.language_space; negatives: the canonical ones
    core.embed(["cat", "espresso cup"])      # (2, D), each phrase encoded once while it stays in the cache

The cache is the core's own (least recently used first out, `cache_size` phrases): a long-running server
that is asked ever new phrases keeps a fixed amount of memory.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import Sequence

import torch

from fmsplat.errors import UserInputError
from fmsplat.fields.base import FeatureField, FieldError
from fmsplat.foundation.effnet import imagenet_class_names
from fmsplat.foundation.lexicon import phrase_classes
from fmsplat.query.presence import vocabulary_for
from fmsplat.query.relevancy import CANONICAL_NEGATIVES, LERF_TEMPERATURE

TEXT_CACHE_SIZE = 1024  # phrases; one embedding is a few KB, so the cache stays within a few MB


class TextCache:
    """phrase -> (D,) embedding, at most `size` phrases; the least recently used one goes first."""

    def __init__(self, size: int = TEXT_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError(f"text cache size must be at least 1, got {size}")
        self.size = int(size)
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, text: str) -> bool:
        return text in self._items

    def get(self, text: str) -> torch.Tensor | None:
        emb = self._items.get(text)
        if emb is not None:
            self._items.move_to_end(text)
        return emb

    def put(self, text: str, emb: torch.Tensor) -> None:
        self._items[text] = emb
        self._items.move_to_end(text)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


@lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...]:
    return tuple(imagenet_class_names())


class QueryCore:
    """One language-aligned space of one field, its negatives and temperature, and its text cache."""

    def __init__(self, field_: FeatureField, space: str | None = None, negatives: Sequence[str] = CANONICAL_NEGATIVES,
                 temperature: float = LERF_TEMPERATURE, cache_size: int = TEXT_CACHE_SIZE,
                 text_cache: TextCache | None = None) -> None:
        self.field = field_
        self.space = space or field_.language_space
        self.spec = field_.space(self.space)
        if not self.spec.language_aligned:
            raise FieldError(f"space '{self.space}' ({self.spec.name}) is not language-aligned; text queries need "
                             f"one of {[a for a, s in field_.spaces.items() if s.language_aligned] or 'none'}")
        self.negatives = tuple(str(n) for n in negatives)
        if not self.negatives:
            raise ValueError("relevancy needs at least one negative phrase")
        self.temperature = float(temperature)
        self.text_cache = text_cache if text_cache is not None else TextCache(cache_size)

    def with_negatives(self, negatives: Sequence[str]) -> "QueryCore":
        """The same field and space against other negatives; the text cache is shared (same space)."""
        return QueryCore(self.field, self.space, negatives, self.temperature, text_cache=self.text_cache)

    def embed(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(T, D) float32 embeddings of `texts` in this space; a phrase still in the cache is not encoded again."""
        texts = [str(t) for t in ([texts] if isinstance(texts, str) else texts)]
        for t in texts:
            if not t.strip():
                raise UserInputError("empty query text")
        # this call's embeddings are held here: a batch larger than the cache must not evict its own phrases
        found = {t: self.text_cache.get(t) for t in dict.fromkeys(texts)}
        missing = [t for t, e in found.items() if e is None]
        if missing:
            emb = self.spec.encode_text(missing).detach().float().cpu()
            if emb.shape != (len(missing), self.spec.dim):
                raise FieldError(f"space '{self.spec.alias}': encode_text returned {tuple(emb.shape)}, "
                                 f"expected ({len(missing)}, {self.spec.dim})")
            if not torch.isfinite(emb).all():
                raise FieldError(f"space '{self.spec.alias}': encode_text returned non-finite values for {missing}")
            for t, e in zip(missing, emb):
                found[t] = e
                self.text_cache.put(t, e)
        return torch.stack([found[t] for t in texts])

    @property
    def negative_embeddings(self) -> torch.Tensor:
        return self.embed(self.negatives)

    @property
    def vocabulary(self):
        """The concepts presence competes against (fmsplat.query.presence.vocabulary_for)."""
        return vocabulary_for(self.spec)

    def named_concepts(self, text: str) -> tuple[int, ...]:
        """Indices of the vocabulary concepts the phrase names (not competitors for it in presence): the
        classes WordNet names for it (fmsplat.foundation.lexicon) when the vocabulary is ImageNet's class
        list ("dog" on a beagle is present); none for other vocabularies."""
        vocab = self.vocabulary
        if vocab.names != _imagenet_names():
            return ()
        return tuple(phrase_classes(text)[1])


__all__ = ["TEXT_CACHE_SIZE", "QueryCore", "TextCache"]
