"""The package's error family.

Every error a user can cause with a file, a directory or an option derives from FmsplatError,
and its message names the file (or option), the field and the value. The command line prints
these as one line (`fmsplat <command>: <message>`) with exit code 1; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class FmsplatError(Exception):
    """Base of the errors a user can cause (bad input files, options, missing scene parts)."""


class UserInputError(FmsplatError, ValueError):
    """A bad option or a request that conflicts with what is on disk (e.g. a non-empty --out)."""


class SceneError(FmsplatError, RuntimeError):
    """A scene directory or one of its artefacts that cannot be used as asked (missing, damaged, or made
    from other Gaussians or another dataset than the scene's)."""


class CheckpointError(FmsplatError, RuntimeError):
    """A checkpoint that cannot be read (truncated, corrupted, from another version)."""
