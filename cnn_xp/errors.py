"""The errors a user can cause, under one base class.

Every error that a bad request, bad file, bad setting or unusable device can cause derives
from :class:`CnnXpError`; its message is one line meant for the terminal. ``cnn-xp`` catches
the base once and prints ``cnn-xp: error: <message>`` with exit status 2 (status 1 for
:class:`TrainingDiverged`). Programming errors (a wrong type passed to a library function)
stay ordinary exceptions.

Each class also derives from the built-in exception its callers have always caught
(``ValueError`` for bad values, ``RuntimeError`` for the device), so ``except ValueError``
keeps working.
"""
from __future__ import annotations


class CnnXpError(Exception):
    """Base of every error a user can cause; the message is one line."""


class ConfigError(CnnXpError, ValueError):
    """A bad flag, recipe field or environment variable; the message names it."""


class DataError(CnnXpError):
    """A data set is missing, unreadable, or not what it claims to be."""


class CheckpointError(CnnXpError, ValueError):
    """A checkpoint or saved model is missing, unreadable, or breaks its schema."""


class ImageError(CnnXpError, ValueError):
    """An image file cannot be used (unreadable, too large, not an image)."""


class DeviceError(CnnXpError, RuntimeError):
    """The requested device cannot be used on this machine."""


class RunFolderError(CnnXpError):
    """A run folder cannot be used: another process holds it, or it cannot be written."""


class WriteError(CnnXpError, OSError):
    """A result could not be written; the message says what is still safe on disk."""


class TrainingDiverged(CnnXpError, RuntimeError):
    """The loss or the weights became NaN or infinite; the message names the epoch and step."""


__all__ = ["CnnXpError", "ConfigError", "DataError", "CheckpointError", "ImageError", "DeviceError",
           "RunFolderError", "WriteError", "TrainingDiverged"]
