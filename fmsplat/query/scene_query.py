"""Ask a fitted scene in words: `SceneQuery`, the front door of the query layer (load once, ask many times).

    from fmsplat.query import SceneQuery
    sq = SceneQuery.open("runs/fox")               # the newest fitted field; text encoder loaded once
    a = sq.ask("fox")                              # Answer: found, score, point, parts (box, Gaussians)
    if a.found:
        sq.export(a, "fox.ply")                    # the object's Gaussians, a 3DGS PLY
    r = sq.in_view(a, view=3)                      # QueryResult: relevancy map, 2D point, mask in view 3
    sq.what_is_here(point=a.point)                 # [Concept(name, similarity), ...]
    sq.variant(negatives=("wall",)).ask("fox")     # the same scene against other negatives (or another space)

Underneath: one QueryCore (field, space, negatives, text cache, fmsplat.query.core) shared by the 3D
`locator` (fmsplat.query.locate) and the per-view `views` (fmsplat.query.views). `fmsplat query`
(fmsplat.apps.query) writes its answers to files.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fmsplat.errors import UserInputError
from fmsplat.fields import load_field
from fmsplat.fields.base import FeatureField, FieldError
from fmsplat.query.core import QueryCore
from fmsplat.query.inventory import INVENTORY_CLUSTERS, Inventory, inventory
from fmsplat.query.locate import Answer, Locator, export_selection
from fmsplat.query.presence import Concept
from fmsplat.query.relevancy import CANONICAL_NEGATIVES
from fmsplat.query.views import QueryResult, ViewQuery
from fmsplat.workspace import Workspace

MAX_TEXT_LENGTH = 200
MAX_VARIANTS = 8  # other spaces/negatives kept at once: each holds its own per-Gaussian features


def slugify(text: str) -> str:
    """A file name for a phrase, readable in any script and distinct for distinct phrases: letters and
    digits of every script kept, lower-cased, other runs turned into '-'; when that loses anything
    (case, punctuation, spacing), a short hash of the exact phrase is appended ('espresso cup' ->
    'espresso-cup', 'Cat!' -> 'cat-<hash>', '猫' -> '猫')."""
    norm = unicodedata.normalize("NFC", text.strip())
    readable = re.sub(r"[\W_]+", "-", norm.lower()).strip("-")[:60]
    if re.fullmatch(r"[^\W_]+( [^\W_]+)*", norm) and norm == norm.lower() and len(norm) <= 60:
        return readable  # lower-case words and single spaces: the name says it all
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else f"phrase-{digest}"


def check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserInputError("a query phrase is empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise UserInputError(f"a query phrase has {len(text)} characters; at most {MAX_TEXT_LENGTH} are allowed")
    return text


class SceneQuery:
    """A fitted scene opened for questions: its dataset, and one QueryCore with its 3D `locator` and its
    per-view `views`."""

    def __init__(self, bundle: Workspace, core: QueryCore) -> None:
        self.bundle = bundle
        self.core = core
        self.locator = Locator(core)
        self.views = ViewQuery(core)
        self._variants: OrderedDict[tuple[str, tuple[str, ...]], SceneQuery] = OrderedDict()
        self._inventories: dict[int, Inventory] = {}

    @classmethod
    def open(cls, scene, method: str | None = None, space: str | None = None,
             negatives: Sequence[str] = CANONICAL_NEGATIVES, data: str | None = None) -> "SceneQuery":
        """Open a scene directory with a fitted field (`fmsplat fit`); `method` defaults to the newest."""
        bundle = Workspace.open(Path(scene), data=data)
        return cls(bundle, QueryCore(load_field(bundle.root, method, bundle=bundle), space, negatives))

    @property
    def root(self) -> Path:
        return self.bundle.root

    @property
    def field(self) -> FeatureField:
        return self.core.field

    def variant(self, space: str | None = None, negatives: Sequence[str] | None = None) -> "SceneQuery":
        """This scene asked in another language space and/or against other negatives (None: this one's):
        the same dataset and field; the last MAX_VARIANTS variants are kept, with their caches."""
        space = space or self.core.space
        negs = self.core.negatives if negatives is None else tuple(str(n) for n in negatives)
        key = (space, negs)
        if key == (self.core.space, self.core.negatives):
            return self
        sq = self._variants.get(key)
        if sq is None:
            core = (self.core.with_negatives(negs) if space == self.core.space
                    else QueryCore(self.field, space, negs, self.core.temperature, self.core.text_cache.size))
            sq = self._variants[key] = SceneQuery(self.bundle, core)
            while len(self._variants) > MAX_VARIANTS:
                self._variants.popitem(last=False)
        self._variants.move_to_end(key)
        return sq

    @property
    def dataset(self):
        return self.bundle.dataset

    def view_index(self, view: int | None) -> int:
        """`view`, checked; None: the first held-out view (else view 0)."""
        n = len(self.dataset)
        if view is None:
            return self.dataset.test_indices[0] if self.dataset.test_indices else 0
        if not isinstance(view, (int, np.integer)) or not 0 <= int(view) < n:
            raise FieldError(f"{self.root}: view {view} does not exist (the dataset {self.dataset.source} has {n} "
                             f"views, 0-{n - 1})")
        return int(view)

    def ask(self, text: str, all_parts: bool = False, **locate) -> Answer:
        """The 3D answer to `text` (Locator.locate): found or not, score, point, parts. "#3" names the 3rd
        object of the inventory (`inventory()`, as `fmsplat inventory` numbers them) instead of a phrase."""
        m = re.fullmatch(r"\s*#(\d{1,4})\s*", check_text(text))
        if m:
            return self.inventory_answer(int(m.group(1)))
        return self.locator.locate(text, all_parts=all_parts, **locate)

    def inventory_answer(self, index: int) -> Answer:
        """Inventory object `index` (1-based) as an Answer: its Gaussians as the one part, its point, box
        and presence; the relevancy (of every Gaussian, for its nearest concept) for the views' maps."""
        obj = self.inventory().object(index)
        word = obj.concepts[0].name
        return Answer(text=word, space=self.core.space, parts=[obj.as_part()], relevancy=self.locator.gaussian_relevancy(word),
                      cutoff=0.0, link=self.inventory().link, n_gaussians=len(self.field.gaussians))

    def ask_many(self, texts: Sequence[str], all_parts: bool = False, **locate) -> list[Answer]:
        return [self.ask(t, all_parts, **locate) for t in texts]

    def in_view(self, answer: Answer | str, view: int | None = None, scale: float = 1.0) -> QueryResult:
        """The answer seen from dataset view `view` (rendered at `scale` of its size): projection of the 3D
        point, relevancy map, 2D argmax, mask, lifted point."""
        if not scale > 0:
            raise UserInputError(f"scale must be positive, got {scale}")
        if isinstance(answer, str):
            answer = self.ask(answer)
        i = self.view_index(view)
        camera = self.dataset.cameras[i]
        size = (max(1, round(camera.width * scale)), max(1, round(camera.height * scale)))
        return self.views.in_view(camera, answer, size=size, view=self.bundle.view_name(i))

    def what_is_here(self, point=None, view: int | None = None, pixel: tuple[int, int] | None = None,
                     k: int = 5) -> list[Concept]:
        """The `k` concepts that best describe a world `point`, or `pixel` (x, y) of dataset view `view`."""
        if (point is None) == (pixel is None):
            raise UserInputError("what_is_here: give a 3D point or a pixel (with its view), not both")
        if point is not None:
            return self.locator.describe_point(point, k)
        i = self.view_index(view)
        return self.views.describe_pixel(self.dataset.cameras[i], int(pixel[0]), int(pixel[1]), k)

    def inventory(self, clusters: int = INVENTORY_CLUSTERS) -> Inventory:
        """What is in the scene, without a phrase (fmsplat.query.inventory); computed once per `clusters`."""
        if clusters not in self._inventories:
            self._inventories[clusters] = inventory(self.locator, self.dataset.cameras, clusters=clusters)
        return self._inventories[clusters]

    def whole_object(self, answer: Answer, grow: bool = True) -> torch.Tensor:
        """(N,) bool: the Gaussians of the object an answer names, as an edit takes them. `grow`: the answer
        grown by hysteresis without crossing a background plane (Locator.grow), joined with the inventory
        objects it falls in (Inventory.grow) less their background-plane Gaussians, then the faint
        Gaussians that draw the same surface (Locator.with_translucent). Without `grow`, the answer's own
        Gaussians only."""
        seeds = answer.selection.mask
        if not grow:
            return seeds
        grown = self.inventory().grow(self.locator.grow(answer))
        grown = seeds | (grown & ~self.locator.background())
        return self.locator.with_translucent(grown)

    def export(self, answer: Answer, path, whole: bool | None = None) -> int:
        """Write the answer's Gaussians as a 3DGS PLY; returns how many. `whole` (default: when the phrase is
        found) writes the whole object (whole_object), as `fmsplat edit --keep` would keep it; otherwise the
        answer's own parts (an absent phrase's best guess has no object to grow into)."""
        whole = answer.found if whole is None else whole
        return export_selection(self.field, self.whole_object(answer) if whole else answer.selection, path)


__all__ = ["MAX_TEXT_LENGTH", "MAX_VARIANTS", "SceneQuery", "check_text", "slugify"]
