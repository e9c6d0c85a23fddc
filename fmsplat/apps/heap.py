"""The heap of a long-running, multi-threaded process (`fmsplat serve`, `fmsplat view`).

glibc's malloc serves a large block (above the mmap threshold, 128 KiB at start) with its own mapping
and returns it to the system when freed, but each such free also raises the threshold to the freed
size (up to 32 MiB). After that, blocks of a few MB (a phrase's text encoding, a render's buffers)
come from the heap arenas, and a server's request threads each get an arena of their own: freed
blocks stay in the arena of the thread that freed them and the process's RSS grows with every new
request. Measured with the engine of `fmsplat serve` on 8 threads: about 1.2 MB per distinct phrase
and no plateau; with the threshold fixed, flat (bench/README.md, "Serving"). Fixing the threshold
(mallopt M_MMAP_THRESHOLD, which also turns off its adjustment) is what MALLOC_MMAP_THRESHOLD_=131072
in the environment does; doing it here makes it the server's own behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value: every block above it gets its own mapping


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes for this process. True when applied; False where the
    C library is not glibc (musl, macOS, Windows: they do not raise a threshold as glibc does)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


__all__ = ["fix_mmap_threshold"]
