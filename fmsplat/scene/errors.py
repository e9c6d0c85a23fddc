"""Errors raised by the scene readers."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset path or file that cannot be read; the message names the file and the problem."""
