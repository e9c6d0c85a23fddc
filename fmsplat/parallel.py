"""Per-view work on a Ray cluster (optional: ``pip install fmsplat[ray]``).

The stages that grow with the number of views (feature extraction, training-free lifting) are
independent per view and combine by sums, so they run as one task per view on a pool of Ray actors:

- each actor builds its worker once (`factory()`: a model loaded once per worker, not per view);
- at most `in_flight` tasks per actor are queued, and each result is handed to the driver's
  `on_result` as soon as it finishes (in completion order): results never pile up in one process;
- a worker lost mid-run (its process killed, its node gone) is restarted by Ray and its tasks are
  retried (``max_restarts`` / ``max_task_retries``): the run completes with every view, and what was
  already handed back (e.g. written to the feature cache) is not redone.

Where the cluster is: ``--ray local`` starts one on this machine for the run; ``--ray ADDRESS`` joins an
existing cluster (``ray start --head`` prints its address, e.g. ``10.0.0.5:6379``; ``auto`` finds one
running here); the environment variable ``FMSPLAT_RAY_ADDRESS`` stands for the option. Without either,
nothing here runs: the single-machine path is unchanged. Workers read the
scene's files (images, feature cache) at the same paths as the driver: on a multi-machine cluster
the scene directory must be on a shared filesystem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

from fmsplat.errors import UserInputError

ENV_ADDRESS = "FMSPLAT_RAY_ADDRESS"
LOCAL = "local"


class ParallelError(UserInputError):
    """Ray is not installed, or the cluster cannot be reached."""


def resolve_address(ray: str | bool | None) -> str | None:
    """What `--ray ADDRESS` asks for: None (no Ray: empty or absent), LOCAL (start a local cluster; also
    True) or the address of an existing cluster ('auto', HOST:PORT, ray://HOST:PORT)."""
    if ray is None or ray is False or ray == "":
        return None
    if ray is True or ray == LOCAL:
        return LOCAL
    return str(ray)


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ParallelError("--ray needs Ray: pip install 'fmsplat[ray]' (or pip install 'ray[default]')") from err
    return ray


@contextmanager
def cluster(address: str | None, num_cpus: int | None = None):
    """Connected to the Ray cluster at `address` (LOCAL: a new one on this machine with `num_cpus`) for the
    block; a cluster started here is shut down after it, one already connected is left as it is."""
    ray = _ray()
    _check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    try:
        if address in (None, LOCAL):
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ParallelError(f"cannot connect to the Ray cluster at {address!r}: {err}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when HOST:PORT (or ray://HOST:PORT) accepts no connection: Ray
    itself waits minutes for an unreachable head before giving up."""
    if address in (None, LOCAL, "auto"):
        return
    import socket

    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ParallelError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or 'local'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ParallelError(f"no Ray cluster answers at {address} ({err}); start one with `ray start --head` "
                            f"there, or use --ray local") from err


class _Host:
    """The actor: holds one worker built by `factory` and calls its methods."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        import numba
        import torch

        torch.set_num_threads(1)  # one core per actor: the cluster's CPUs are the parallelism
        numba.set_num_threads(1)
        self.worker = factory()

    def call(self, method: str, item):
        return getattr(self.worker, method)(item)


def map_views(factory: Callable[[], Any], method: str, items: Sequence, on_result: Callable[[int, Any], None],
              address: str | None = LOCAL, workers: int | None = None, progress: bool = True, desc: str = "views",
              in_flight: int = 2, lazy: bool = False) -> int:
    """Call ``worker.<method>(item)`` for every item on a pool of Ray actors (``worker = factory()`` built
    once per actor) and ``on_result(index, result)`` on the driver as each task finishes. With `lazy`,
    items are callables giving the item, called only when its task is submitted (an image is loaded
    when a worker is ready for it). `workers` defaults to the cluster's CPUs. Returns the number of
    workers used."""
    from tqdm.auto import tqdm

    items = items if isinstance(items, (list, tuple)) else list(items)
    if not items:
        return 0
    with cluster(address, num_cpus=workers) as ray:
        n = max(1, min(len(items), workers or int(ray.cluster_resources().get("CPU", 1))))
        host = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(_Host)
        factory_ref = ray.put(factory)
        actors = [host.remote(factory_ref) for _ in range(n)]
        pending: dict = {}  # ObjectRef -> (index, actor)
        todo = list(range(len(items)))[::-1]
        bar = tqdm(total=len(items), desc=desc, unit="view", disable=not progress, dynamic_ncols=True)

        def submit(actor):
            if todo:
                i = todo.pop()
                item = items[i]() if lazy else items[i]
                pending[actor.call.remote(method, item)] = (i, actor)

        try:
            for actor in actors:
                for _ in range(in_flight):
                    submit(actor)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i, actor = pending.pop(done[0])
                on_result(i, ray.get(done[0]))
                bar.update(1)
                submit(actor)
        finally:
            bar.close()
            for actor in actors:
                ray.kill(actor)
    return n


__all__ = ["ENV_ADDRESS", "LOCAL", "ParallelError", "cluster", "map_views", "resolve_address"]
