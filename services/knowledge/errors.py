"""Errors of the knowledge-base library."""

from __future__ import annotations


class KnowledgeError(Exception):
    """Base class of the knowledge-base errors."""


class KnowledgeFormatError(KnowledgeError):
    """A knowledge folder file is missing, unreadable or invalid; the message names the file
    (and the line where known)."""


class IndexLoadError(KnowledgeError):
    """A knowledge index directory is missing, corrupt or of an unsupported format."""
