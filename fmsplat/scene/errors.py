"""Errors raised by the scene readers."""

from __future__ import annotations

from fmsplat.errors import FmsplatError


class DatasetError(FmsplatError, ValueError):
    """A dataset path or file that cannot be read; the message names the file and the problem."""
