"""Exceptions raised by the stream package. The CLI turns them into one-line messages."""

from __future__ import annotations


class AvstreamError(Exception):
    """Base class: something the user can act on, with a one-line message."""


class UsageError(AvstreamError):
    """The request itself is wrong (bad option value, output equals input, ...): exit code 2."""


class InputError(AvstreamError):
    """The input media cannot be read or holds no video: exit code 1."""


class OutputError(AvstreamError):
    """The output cannot be written: exit code 1."""
