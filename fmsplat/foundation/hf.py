"""Real foundation models through `transformers`: CLIP, SigLIP, DINO (ViT) and DINOv2.

Each extractor is built from a hub id or a local directory (`clip:openai/clip-vit-base-patch16`,
`clip:/models/clip-b16`), or from an already-built model object (tests, benchmarks). Nothing falls
back silently: a model that cannot be loaded raises ModelUnavailableError naming the model, the
local directory looked for, the hub cache, and how to provide the weights.

Dense features (B, D, H/p, W/p), one per patch, images resized to multiples of the patch size p
(position embeddings interpolated):

- CLIP, `mode="proj"`: every output token through the final post-layernorm and the visual
  projection, the path the CLS token takes to the joint space. `mode="maskclip"` (MaskCLIP, Zhou et
  al. 2022): the last block's value embeddings (layer_norm1 → v_proj → out_proj, no attention mixing,
  no residual or MLP), then post-layernorm and projection; it localises better.
- SigLIP: the pooled embedding comes from an attention-pooling head (one learned probe). With a
  single token to attend to, that head's attention returns the token's own value; each patch
  token is passed through the head that way (`mode="proj"`), or the last block's value embeddings
  are (`mode="maskclip"`).
- DINO (ViT-S/8 as in FMGS): keys of the last attention layer.
- DINOv2: final normalised patch tokens (register tokens dropped).

Text (CLIP, SigLIP) is the model's own text embedding; similarity is the cosine of L2-normalised
vectors. `encode_pooled` returns the model's own image embedding of the image resized to the
model's input size (equal to `get_image_features`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from fmsplat.foundation.base import ModelUnavailableError, resize, safe_key, to_bchw

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return "~/.cache/huggingface/hub"


def load_pretrained(loader: Callable[..., Any], ident: str, family: str, offline: bool | None = None, **kw):
    """Call `loader(ident, ...)`, turning any load failure into an error that says how to fix it."""
    local = Path(ident).expanduser()
    looks_local = local.exists() or ident.startswith((".", "/", "~")) or os.sep in ident.strip("/").replace("/", "", 1)
    if looks_local and not local.is_dir():
        raise ModelUnavailableError(
            f"{family} model '{ident}': local directory {local.resolve()} does not exist. Provide it with "
            f"`huggingface-cli download <hub id> --local-dir {local}` on a machine with network, then "
            f"`--model {family}:{local}`."
        )
    src = str(local) if local.is_dir() else ident
    only_local = local.is_dir() or _offline(offline)
    try:
        from fmsplat.foundation.sentence import quiet_transformers

        with quiet_transformers():
            return loader(src, local_files_only=only_local, **kw)
    except (OSError, ValueError, EnvironmentError) as err:
        where = f"local directory {local.resolve()}" if local.is_dir() else (
            f"local directory {local.resolve()} (not found) and hub cache {_hub_cache()}"
        )
        net = "offline mode (HF_HUB_OFFLINE)" if only_local and not local.is_dir() else "download failed or files missing"
        raise ModelUnavailableError(
            f"Cannot load {family} model '{ident}' ({net}); looked in {where}. To provide it: on a machine with "
            f"network run `huggingface-cli download {ident} --local-dir DIR` (config.json, model.safetensors "
            f"and, for text, the tokenizer files), copy DIR here and use `--model {family}:DIR`; or point HF_HOME "
            f"at a cache that holds it. Cause: {type(err).__name__}: {err}"
        ) from err


def _read_norm(ident: str, mean: tuple, std: tuple) -> tuple[tuple, tuple]:
    """Image mean/std from a local directory's preprocessor_config.json, else the family default."""
    cfg = Path(ident).expanduser() / "preprocessor_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        return tuple(data.get("image_mean", mean)), tuple(data.get("image_std", std))
    return mean, std


def _auto_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _HFExtractor:
    family = ""
    language_aligned = False
    default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
    modes: tuple[str, ...] = ("default",)

    def __init__(
        self,
        model: str | torch.nn.Module,
        *,
        name: str | None = None,
        mode: str | None = None,
        short_side: int | None = None,
        batch_size: int = 4,
        device: str | torch.device | None = None,
        offline: bool | None = None,
        tokenizer: Callable | None = None,
    ) -> None:
        self.mode = mode or self.modes[0]
        if self.mode not in self.modes:
            raise ValueError(f"{self.family}: mode must be one of {self.modes}, got '{self.mode}'")
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be positive, got {short_side}")
        self.device = _auto_device(device)
        self.offline = offline
        if isinstance(model, torch.nn.Module):
            self.model_id = name or f"{type(model).__name__}-unnamed"
            self.model = model
            self.mean, self.std = self.default_mean, self.default_std
        else:
            self.model_id = model
            self.model = self._load(model)
            self.mean, self.std = _read_norm(model, self.default_mean, self.default_std)
        self.model = self.model.eval().requires_grad_(False).to(self.device)
        self.short_side = short_side
        self.batch_size = int(batch_size)
        self._tokenizer = tokenizer
        vcfg = self.vision_config
        self.patch = int(vcfg.patch_size)
        self.input_size = int(vcfg.image_size)
        settings = [self.mode] if len(self.modes) > 1 else []
        self.key = safe_key(self.family, self.model_id, *settings, f"short{short_side or 'native'}")

    # -- to be provided by each family
    def _load(self, ident: str) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def vision_config(self):
        return self.model.config.vision_config if hasattr(self.model.config, "vision_config") else self.model.config

    def _dense(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, N, D) patch features in row-major grid order."""
        raise NotImplementedError

    # -- shared
    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for an input image of height × width."""
        scale = 1.0 if self.short_side is None else self.short_side / min(height, width)
        return max(1, round(height * scale / self.patch)), max(1, round(width * scale / self.patch))

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        """(B, 3, H, W) or (B, H, W, 3) float [0, 1] -> (B, dim, h, w), h, w = grid_size(H, W)."""
        x = to_bchw(images)
        gh, gw = self.grid_size(*x.shape[-2:])
        x = self._normalise(resize(x, (gh * self.patch, gw * self.patch)))
        out = []
        for i in range(0, len(x), self.batch_size):
            tokens = self._dense(x[i : i + self.batch_size].to(self.device))
            out.append(tokens.transpose(1, 2).reshape(len(tokens), -1, gh, gw).float().cpu())
        return torch.cat(out)

    def _layers(self) -> torch.nn.ModuleList:
        """The vision tower's transformer blocks, whatever the transformers version calls them."""
        tower = getattr(self.model, "vision_model", self.model)
        for mod in tower.modules():
            if isinstance(mod, torch.nn.ModuleList) and len(mod) == self.vision_config.num_hidden_layers:
                return mod
        raise RuntimeError(f"{self.family}: cannot find the transformer blocks of {type(self.model).__name__}")

    def _capture_last_block_input(self, run: Callable[[], Any]) -> tuple[Any, torch.Tensor]:
        """Run the model once, returning its output and the hidden states entering the last block."""
        seen: dict[str, torch.Tensor] = {}

        def grab(_module, args, kwargs):
            seen["x"] = args[0] if args else kwargs["hidden_states"]

        handle = self._layers()[-1].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = run()
        finally:
            handle.remove()
        return out, seen["x"]


class _LanguageHF(_HFExtractor):
    language_aligned = True
    modes = ("proj", "maskclip")
    text_padding: str | bool = True

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim if hasattr(self.model.config, "projection_dim") else self.vision_config.hidden_size)

    def tokenizer(self):
        if self._tokenizer is None:
            if isinstance(self.model_id, str) and not self.model_id.endswith("-unnamed"):
                from transformers import AutoTokenizer

                self._tokenizer = load_pretrained(AutoTokenizer.from_pretrained, self.model_id, self.family, self.offline)
            else:
                raise ModelUnavailableError(f"{self.family} model '{self.model_id}' was given as an object without a tokenizer")
        return self._tokenizer

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, dim) text embeddings in the image joint space (not normalised; compare by cosine)."""
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer()(list(texts), padding=self.text_padding, truncation=True, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return _pooled(self.model.get_text_features(**batch)).float().cpu()

    @torch.no_grad()
    def encode_pooled(self, images) -> torch.Tensor:
        """(B, dim): the model's own image embedding of each image resized to its input size."""
        x = self._normalise(resize(to_bchw(images), (self.input_size, self.input_size)))
        out = [
            _pooled(self.model.get_image_features(pixel_values=x[i : i + self.batch_size].to(self.device))).float().cpu()
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(out)


def _pooled(out) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output holds the projected embedding.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipExtractor(_LanguageHF):
    family = "clip"
    default_mean, default_std = CLIP_MEAN, CLIP_STD

    def _load(self, ident):
        from transformers import CLIPModel

        return load_pretrained(CLIPModel.from_pretrained, ident, self.family, self.offline)

    def _dense(self, pixels):
        vision = self.model.vision_model
        out, last_in = self._capture_last_block_input(
            lambda: vision(pixel_values=pixels, interpolate_pos_encoding=True)
        )
        if self.mode == "maskclip":
            block = self._layers()[-1]
            attn = block.self_attn
            tokens = attn.out_proj(attn.v_proj(block.layer_norm1(last_in)))
        else:
            tokens = out.last_hidden_state
        return self.model.visual_projection(vision.post_layernorm(tokens[:, 1:]))


class SiglipExtractor(_LanguageHF):
    family = "siglip"
    default_mean, default_std = HALF_MEAN, HALF_STD
    text_padding = "max_length"  # SigLIP was trained on text padded to its full length

    def _load(self, ident):
        from transformers import SiglipModel

        return load_pretrained(SiglipModel.from_pretrained, ident, self.family, self.offline)

    def _head_per_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """The attention-pooling head applied to each token alone (its attention returns the value)."""
        head = self.model.vision_model.head
        mha = head.attention
        d = tokens.shape[-1]
        value = F.linear(tokens, mha.in_proj_weight[2 * d :], mha.in_proj_bias[2 * d :] if mha.in_proj_bias is not None else None)
        x = mha.out_proj(value)
        return x + head.mlp(head.layernorm(x))

    def _dense(self, pixels):
        vision = self.model.vision_model
        if not getattr(vision, "use_head", True):
            raise ModelUnavailableError(f"siglip model '{self.model_id}' has no pooling head (vision_use_head=False)")
        out, last_in = self._capture_last_block_input(
            lambda: vision(pixel_values=pixels, interpolate_pos_encoding=True)
        )
        if self.mode == "maskclip":
            block = self._layers()[-1]
            attn = block.self_attn
            tokens = vision.post_layernorm(attn.out_proj(attn.v_proj(block.layer_norm1(last_in))))
        else:
            tokens = out.last_hidden_state  # already post-layernormed
        return self._head_per_token(tokens)


class DinoExtractor(_HFExtractor):
    """DINO ViT (e.g. facebook/dino-vits8): keys of the last attention layer, as FMGS uses."""

    family = "dino"

    def _load(self, ident):
        from transformers import ViTModel

        return load_pretrained(ViTModel.from_pretrained, ident, self.family, self.offline, add_pooling_layer=False)

    @property
    def dim(self) -> int:
        return int(self.vision_config.hidden_size)

    def _key_module(self) -> torch.nn.Module:
        block = self._layers()[-1]
        for name, mod in block.named_modules():
            if isinstance(mod, torch.nn.Linear) and re.search(r"(^|\.)(k_proj|key)$", name):
                return mod
        raise RuntimeError(f"dino: no key projection found in the last block of {type(self.model).__name__}")

    def _dense(self, pixels):
        seen: dict[str, torch.Tensor] = {}
        handle = self._key_module().register_forward_hook(lambda _m, _i, out: seen.__setitem__("k", out))
        try:
            self.model(pixel_values=pixels, interpolate_pos_encoding=True)
        finally:
            handle.remove()
        return seen["k"][:, 1:]


class Dinov2Extractor(_HFExtractor):
    """DINOv2: final layer-normalised patch tokens (register tokens, if any, dropped)."""

    family = "dinov2"

    def _load(self, ident):
        from transformers import AutoModel

        return load_pretrained(AutoModel.from_pretrained, ident, self.family, self.offline)

    @property
    def dim(self) -> int:
        return int(self.vision_config.hidden_size)

    def _dense(self, pixels):
        hidden = self.model(pixel_values=pixels).last_hidden_state
        skip = 1 + int(getattr(self.vision_config, "num_register_tokens", 0) or 0)
        return hidden[:, skip:]
