"""Is it here? Presence of a phrase, and the concepts that best describe a place.

LERF relevancy only ranks places against each other: every phrase has a best pixel, so on its own it
cannot say "not here". Presence asks a question with a fixed meaning instead: *at the phrase's best
place, does the phrase describe what is there about as well as the concepts that best describe it?*
The competing concepts are the extractor's own vocabulary — the 1000 ImageNet classes for the embedded
model (its text space is built from them), a shipped list of everyday concepts (people, furniture,
household objects, surfaces; `data/everyday_concepts.txt`) for CLIP-like models — each embedded by the
same text encoder as the query.

With f the unit feature of the place, q the unit query embedding and v_i the vocabulary's::

    rank      = 1 + #{i : f.v_i > f.q}         (vocabulary entries that are the query itself excluded;
                                                when the best v_i is one the phrase names in WordNet,
                                                "dog" on a beagle, f.q is taken as f.v_i and ranks 1)
    threshold = the k-th largest f.v_i          (k = PRESENCE_TOP_K)
    score     = sigmoid(PRESENCE_TEMPERATURE * (f.q - threshold))
    found     = score >= 0.5, i.e. rank <= k

A fox on a fox scores ~1 (it *is* the best concept there); "computer" on the same fox ranks behind
"red fox", "kit fox", "tabby cat"..., so it is not found, however high its relevancy. k and the
temperature were calibrated on the generated scenes with distractor phrases (bench/README.md,
"Answers a user can trust"); the score's meaning does not depend on the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

import torch
import torch.nn.functional as F

PRESENCE_TOP_K = 5
PRESENCE_TEMPERATURE = 10.0
NAMED_READINGS = 1  # how many of the place's best readings may be a class the phrase names (bench/README.md)
SAME_CONCEPT = 0.999  # a vocabulary entry this close to the query is the query itself, not a competitor


def everyday_concepts() -> list[str]:
    """The shipped vocabulary for CLIP-like models (package data, one concept per line)."""
    text = resources.files("fmsplat.query").joinpath("data/everyday_concepts.txt").read_text("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Vocabulary:
    """Concept names and their unit embeddings (M, D) in one space."""

    source: str
    names: tuple[str, ...]
    embeddings: torch.Tensor

    def __len__(self) -> int:
        return len(self.names)


_VOCABULARIES: dict = {}


def vocabulary_for(spec) -> Vocabulary:
    """The concept vocabulary of a language-aligned space `spec` (fields.base.SpaceSpec), embedded once
    per process: the extractor's own class names when it has them, else the everyday concepts."""
    if spec in _VOCABULARIES:
        return _VOCABULARIES[spec]
    ex = spec.extractor()
    names = getattr(ex, "class_names", None)
    source = f"{spec.alias} class names"
    if names and hasattr(ex, "vocabulary_embeddings"):  # the extractor has them at hand (effnet: cached)
        emb = ex.vocabulary_embeddings()
    else:
        if not names:
            names, source = everyday_concepts(), "everyday concepts"
        emb = spec.encode_text(list(names))
    emb = F.normalize(emb.detach().float().cpu(), dim=-1)
    if emb.shape != (len(names), spec.dim) or not torch.isfinite(emb).all():
        raise ValueError(f"space '{spec.alias}': the vocabulary embedded to {tuple(emb.shape)} (or non-finite values)")
    vocab = Vocabulary(source=source, names=tuple(names), embeddings=emb)
    _VOCABULARIES[spec] = vocab
    return vocab


@dataclass
class Concept:
    name: str
    similarity: float  # cosine of the place's feature with the concept's embedding

    def to_json(self) -> dict:
        return {"name": self.name, "similarity": round(self.similarity, 4)}


@dataclass
class Presence:
    """Whether a phrase describes its best place (see the module docstring)."""

    found: bool
    score: float  # sigmoid(T * (similarity - threshold)): 0.5 is the decision boundary, on every scene
    rank: int  # 1 = the phrase describes the place better than every vocabulary concept
    similarity: float  # cos(place, phrase)
    threshold: float  # cos(place, k-th best concept)
    top_k: int
    concepts: list[Concept] = field(default_factory=list)  # what best describes the place, best first

    def to_json(self) -> dict:
        return {"found": self.found, "score": round(self.score, 4), "rank": self.rank,
                "similarity": round(self.similarity, 4), "threshold": round(self.threshold, 4), "top_k": self.top_k,
                "best_concepts": [c.to_json() for c in self.concepts]}


def describe(feature: torch.Tensor, vocab: Vocabulary, k: int = 5) -> list[Concept]:
    """The `k` vocabulary concepts closest to a place's feature (D,), best first."""
    f = F.normalize(torch.as_tensor(feature, dtype=torch.float32).reshape(-1), dim=0)
    if f.shape[0] != vocab.embeddings.shape[1]:
        raise ValueError(f"describe: feature of dim {f.shape[0]} for a {vocab.embeddings.shape[1]}-d vocabulary")
    sims = vocab.embeddings @ f
    top = torch.topk(sims, min(k, len(vocab)))
    return [Concept(vocab.names[int(i)], float(s)) for s, i in zip(top.values, top.indices)]


def presence(feature: torch.Tensor, query: torch.Tensor, vocab: Vocabulary, top_k: int = PRESENCE_TOP_K,
             temperature: float = PRESENCE_TEMPERATURE, describe_k: int = 5, named: Sequence[int] = ()) -> Presence:
    """Presence of the phrase embedded as `query` (D,) at a place whose feature is `feature` (D,).
    `named`: indices of vocabulary concepts that the phrase names (QueryCore.named_concepts: "dog" names
    the beagle): when the place's best concept is one of them, the phrase is as present as that concept
    (similarity and rank 1). Only the best: a motorcycle whose 3rd reading is "mountain bike" does not make
    "bicycle" present."""
    if top_k < 1 or top_k > len(vocab):
        raise ValueError(f"presence: top_k must be in [1, {len(vocab)}], got {top_k}")
    f = F.normalize(torch.as_tensor(feature, dtype=torch.float32).reshape(-1), dim=0)
    q = F.normalize(torch.as_tensor(query, dtype=torch.float32).reshape(-1), dim=0)
    if not (torch.isfinite(f).all() and torch.isfinite(q).all()) or float(f.norm()) == 0.0:
        raise ValueError("presence: the place has no feature (zero or non-finite)")
    sims = vocab.embeddings @ f
    rival = (vocab.embeddings @ q) < SAME_CONCEPT
    s_q = float(f @ q)
    named_set = set(int(i) for i in named)
    for reading in torch.topk(sims, min(NAMED_READINGS, len(vocab))).indices.tolist():
        if reading in named_set:  # one of the place's best readings is a kind of the phrase: "dog" on a beagle
            s_q = max(s_q, float(sims[reading]))
            rival[reading] = False
            break
    competitors = sims[rival]
    k = min(top_k, len(competitors))
    threshold = float(torch.topk(competitors, k).values[-1])
    rank = 1 + int((competitors > s_q).sum())
    score = float(torch.sigmoid(torch.tensor(temperature * (s_q - threshold))))
    return Presence(found=score >= 0.5, score=score, rank=rank, similarity=s_q, threshold=threshold, top_k=k,
                    concepts=describe(f, vocab, describe_k))


__all__ = ["Concept", "PRESENCE_TEMPERATURE", "PRESENCE_TOP_K", "Presence", "Vocabulary", "describe",
           "everyday_concepts", "presence", "vocabulary_for"]
