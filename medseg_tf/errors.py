"""Error types raised where user data is read.

Every error about a file names that file and says what is wrong with it, so a
student sees one clear line instead of a traceback from deep inside a library.
"""

from __future__ import annotations

import os


class MedsegError(Exception):
    """Base class of every error raised on purpose by :mod:`medseg_tf`."""


class DataError(MedsegError, ValueError):
    """A data file or folder is missing, corrupt or inconsistent.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file or folder at fault.
    problem : str
        What is wrong, in one sentence.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DownloadError(MedsegError, RuntimeError):
    """A download failed, was refused, or its checksum did not match."""


class OverwriteError(MedsegError, FileExistsError):
    """An output already exists and the caller did not ask to overwrite it."""


class ConfigError(MedsegError, ValueError):
    """A setting (a config key, a function argument or a command-line option) has an impossible value.

    Parameters
    ----------
    key : str or None
        The setting at fault, as the config names it (``"epochs"``, ``"patch_size"``); the command line
        shows it as its option (``--epochs``).
    problem : str
        What is wrong, starting with a verb phrase (``"must be >= 1, got 0"``).
    """

    def __init__(self, key: str | None, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key} {problem}" if key else problem)


class RunLockedError(MedsegError, RuntimeError):
    """Another process is writing to the same run folder."""
