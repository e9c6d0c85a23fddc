"""One registry of extractors, addressed by name: `get_extractor("effnet")`, `get_extractor("clip:DIR")`."""

from __future__ import annotations

from typing import Callable

from fmsplat.errors import UserInputError

_EMBEDDED = {
    "effnet": "EfficientNet-Lite0, 1280-d stride-32 map, text through ImageNet class rows (embedded, offline)",
    "effnet-mid": "EfficientNet-Lite0 stride-16 (112-d) or stride-8 (40-d) block features (embedded, offline)",
    "effnet-labels": "sentence embedding (MiniLM, 384-d) of each cell's recognised ImageNet label: M3's painted "
                     "language space (embedded, offline)",
}
_FAMILIES = {
    "clip": "CLIP through transformers: clip:<hub id or local dir>, e.g. clip:openai/clip-vit-base-patch16",
    "siglip": "SigLIP through transformers: siglip:<hub id or local dir>, e.g. siglip:google/siglip-base-patch16-224",
    "dino": "DINO ViT last-layer keys: dino:<hub id or local dir>, e.g. dino:facebook/dino-vits8",
    "dinov2": "DINOv2 patch tokens: dinov2:<hub id or local dir>, e.g. dinov2:facebook/dinov2-small",
}


def list_extractors() -> dict[str, str]:
    """Names (or `family:` prefixes) accepted by get_extractor, with one line on each."""
    return {**_EMBEDDED, **{f"{k}:<id>": v for k, v in _FAMILIES.items()}}


def known_extractor(name: str) -> bool:
    """Whether get_extractor accepts `name` (options after '@' aside), without building anything."""
    base = name.split("@", 1)[0]
    family, sep, ident = base.partition(":")
    return base in _EMBEDDED or bool(sep and family in _FAMILIES and ident)


def _family_factory(family: str) -> Callable:
    from fmsplat.foundation import hf

    return {"clip": hf.ClipExtractor, "siglip": hf.SiglipExtractor, "dino": hf.DinoExtractor, "dinov2": hf.Dinov2Extractor}[family]


def _build(factory: Callable, name: str, options: dict, *args):
    """`factory(*args, **options)`; an option the extractor refuses (a value out of its range, a keyword
    it does not take) is a user's mistake naming the extractor, not a traceback."""
    try:
        return factory(*args, **options)
    except (TypeError, ValueError) as err:
        if not options:  # nothing the user chose: a real failure
            raise
        raise UserInputError(f"extractor '{name}' with options {options}: {err}") from err


def get_extractor(name: str, pyramid: bool = False, **options):
    """Create an extractor by name; options go to its constructor (e.g. input_scale=2, stride=8).

    pyramid=True wraps a language-aligned extractor in the FMGS hybrid multi-scale map; its option
    tile_input=N encodes the tiles at N x N pixels instead of the model's input size (224). Options may
    also follow the name as '@KEY=VALUE' pairs ('effnet-mid@stride=8', the spelling of `fit --models`).
    """
    if "@" in name:
        name, *pairs = name.split("@")
        options = {**parse_options(pairs), **options}
    if pyramid:
        from fmsplat.foundation.pyramid import PyramidExtractor

        tile_input = options.pop("tile_input", None)
        return PyramidExtractor(get_extractor(name, **options), tile_input=tile_input)
    if "tile_input" in options:
        raise UserInputError(f"extractor option tile_input (the FMGS pyramid's tile size) needs pyramid=True; '{name}' "
                         "was asked for without the pyramid")
    if name == "effnet":
        from fmsplat.foundation.effnet import EffNetExtractor

        return _build(EffNetExtractor, name, options)
    if name == "effnet-mid":
        from fmsplat.foundation.effnet import EffNetMidExtractor

        return _build(EffNetMidExtractor, name, options)
    if name == "effnet-labels":
        from fmsplat.foundation.effnet import EffNetLabelsExtractor

        return _build(EffNetLabelsExtractor, name, options)
    family, sep, ident = name.partition(":")
    if sep and family in _FAMILIES:
        if not ident:
            raise UserInputError(f"extractor name '{name}' lacks a model: use {family}:<hub id or local dir>")
        return _build(_family_factory(family), name, options, ident)
    known = ", ".join(list_extractors())
    raise UserInputError(f"unknown extractor '{name}'; known: {known}")


def parse_options(pairs: list[str]) -> dict:
    """Extractor options ["input_scale=2", "mode=maskclip"] -> {"input_scale": 2, "mode": "maskclip"}: values
    read as int, float, true/false or text (each extractor checks its own keyword arguments). Field settings
    are typed instead: fmsplat.fields.configs.parse_opts reads each by its declared type."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UserInputError(f"extractor option '{pair}' is not KEY=VALUE")
        for convert in (int, float):
            try:
                options[key] = convert(value)
                break
            except ValueError:
                continue
        else:
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return options


