"""Errors a user causes (a bad file, folder or data set): the ``hjepa`` command reports each as one line
``hjepa: error: ...`` and exits 2. Kept free of torch so that the command can name them before it imports
anything heavy."""
from __future__ import annotations


class UserError(Exception):
    """A problem with something the user gave us; the message names it and says what is wrong."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is corrupt, truncated, not ours, or holds objects a safe load refuses."""


class RunFolderError(UserError, FileExistsError):
    """A run folder that another process holds, or that a new run would overwrite."""


class DataError(UserError, ValueError):
    """A data set that cannot be read: an empty folder, no video that decodes."""
