"""The optimisation engine under every fit in fmsplat (the 3DGS trainer and each feature-field method).

`Run` is one resumable run of `steps` optimisation steps: it owns the run's torch generator, its
checkpoint (written atomically every `checkpoint_every` steps), the resume check, the progress bar
and the timing. The caller decides where the checkpoint lives (the scene workspace does), what
identifies the run (settings that must not change, the data it trains on) and what one step does:

    run = Run(name="3dgs", steps=n, checkpoint=path, identity={"config": ..., "data": ...}, seed=s,
              checkpoint_every=k, resume=resume)
    ... build the model, then run.restore(load) to continue a saved state (run.saved) ...
    run.loop(step, state)   # step(i) -> values shown on the bar; state() -> what a checkpoint keeps

A checkpoint is one torch file: {"step", "seconds", "identity" (JSON text), "generator", "state"}.
A resumed run restores the generator with the rest, so it continues the sequence of an uninterrupted
run exactly; `resume=True` refuses a checkpoint whose identity differs, naming every entry that does.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from fmsplat import atomic
from fmsplat.errors import CheckpointError, UserInputError

# identity entries too long to print in a refusal: only that they differ is said
UNSHOWN = ("train_views", "geometry")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` torch intra-op threads (0: unchanged). Per-step tensors are small and
    torch's OpenMP pool competes with the numba rasterizer's threads (bench/README.md, "torch threads
    and numba threads")."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_checkpoint(path: Path, payload: dict) -> None:
    """Save `payload` to `path` atomically: a killed run leaves the previous checkpoint whole."""
    atomic.write_with(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: Path, error: type[Exception] = CheckpointError) -> dict:
    """The checkpoint at `path` (tensors and plain data only); `error` naming the file if it is damaged."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # torch raises several types for damaged files; one line naming the file
        raise error(f"{path}: cannot read the checkpoint ({type(err).__name__}; damaged or not a checkpoint); "
                    "delete it to start afresh") from err


def check_resume(source: Path, saved: dict, now: dict, error: type[Exception] = UserInputError) -> None:
    """Refuse to continue a run recorded as `saved` ({part: {entry: value}}, e.g. config and data) with
    the identity `now`, naming every entry that differs (a request that conflicts with what is on disk)."""
    diffs = []
    for part in sorted(set(saved) | set(now)):
        a, b = saved.get(part, {}), now.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                was, new = ("...", "...") if key in UNSHOWN else (a.get(key), b.get(key))
                diffs.append(f"{part} {key}: {was!r} -> {new!r}")
    if diffs:
        raise error(f"{source}: cannot resume, it was written by a run with other settings or data "
                    f"({'; '.join(diffs)}); resume with the original settings or start a new run")


class Run:
    """One resumable optimisation run (see the module docstring). After construction: `start` (the
    step it continues from, 0 when fresh), `saved` (the caller's state of the checkpoint, or None),
    `generator` (seeded with `seed`, or as the checkpoint left it)."""

    def __init__(self, *, name: str, steps: int, checkpoint: Path, identity: dict, seed: int,
                 checkpoint_every: int, resume: bool = False, progress: bool = True,
                 error: type[Exception] | None = None):
        """`error`: the exception for a damaged or foreign checkpoint (default: CheckpointError for a
        damaged one, UserInputError for one of another run)."""
        self.name, self.steps, self.path, self.identity = name, steps, Path(checkpoint), identity
        self.every, self.progress, self.error = checkpoint_every, progress, error or CheckpointError
        self.generator = torch.Generator().manual_seed(seed)
        self.start, self.saved, self.last = 0, None, {}
        self._before, self._t0, self._untimed = 0.0, None, 0.0
        atomic.remove_leftovers(self.path)  # a checkpoint write killed outright left its temporary file
        if resume and self.path.is_file():
            payload = read_checkpoint(self.path, self.error)
            try:
                check_resume(self.path, json.loads(payload["identity"]), identity, error or UserInputError)
                self.generator.set_state(payload["generator"])
                self.start, self._before, self.saved = int(payload["step"]), float(payload["seconds"]), payload["state"]
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                self._not_this_version(err)
            self.note(f"{self.path}: resuming from the checkpoint at step {self.start} of {steps}")
        elif self.path.is_file():
            warnings.warn(f"{self.path}: an earlier run's checkpoint exists; starting afresh will replace it "
                          "(pass resume=True / --resume to continue it)", stacklevel=3)
        elif resume:
            self.note(f"{self.path}: no checkpoint to resume from; starting afresh")

    def _not_this_version(self, err: Exception):
        if isinstance(err, (self.error, UserInputError)):
            raise err
        raise self.error(f"{self.path}: not a checkpoint of this version's {self.name} run ({type(err).__name__}: "
                         f"{err}); delete it to start afresh") from err

    def note(self, text: str) -> None:
        if self.progress:
            tqdm.write(text)

    def restore(self, load: Callable[[dict], None]) -> None:
        """`load(saved)` when resuming; a checkpoint whose state does not fit is one error naming it."""
        if self.saved is not None:
            try:
                load(self.saved)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
                self._not_this_version(err)

    @property
    def seconds(self) -> float:
        """Optimisation seconds of the whole run so far (earlier sessions included, `untimed` blocks not)."""
        return self._before + self.session_seconds

    @property
    def session_seconds(self) -> float:
        """Optimisation seconds of this session's loop."""
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0 - self._untimed

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """A block inside a step that does not count as optimisation time (evaluation)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self._untimed += time.perf_counter() - t

    def loop(self, step: Callable[[int], dict], state: Callable[[], dict]) -> dict:
        """Run steps start..steps-1: `step(i)` does step i and returns values for the progress bar
        (numbers); every `checkpoint_every` steps (not after the last) the checkpoint is rewritten with
        `state()`. Returns the last step's values."""
        self._t0 = time.perf_counter()
        bar = tqdm(range(self.start, self.steps), initial=self.start, total=self.steps, desc=self.name,
                   disable=not self.progress, dynamic_ncols=True)
        for i in bar:
            self.last = step(i)
            if i % 10 == 0:
                bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in self.last.items()
                                 if isinstance(v, (int, float))}, refresh=False)
            done = i + 1
            if done % self.every == 0 and done < self.steps:
                write_checkpoint(self.path, {"step": done, "seconds": self.seconds, "identity": json.dumps(self.identity),
                                             "generator": self.generator.get_state(), "state": state()})
        bar.close()
        return self.last

    def remove_checkpoint(self) -> None:
        """Delete the checkpoint (the run's result is saved), and its folder if that is left empty."""
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()


def optimise(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One gradient step: clear the gradients, back-propagate `loss`, update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


__all__ = ["Run", "check_resume", "optimise", "read_checkpoint", "torch_threads", "write_checkpoint"]
