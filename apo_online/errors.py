"""The errors a run ends with, one line each (apo_online/cli.py prints them and exits 2, or 3 for the GAME_FAULTS).
In one module that imports nothing of the package, so every module can raise them without importing the module that
detects them."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or inconsistent with another."""


class DataFormatError(ValueError):
    """A data row does not have the fields or types its format needs."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        where = source if row is None else f"{source}, row {row}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field, self.problem = source, row, field, problem


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed by this run (missing, incomplete or written by a different setup)."""


class RunDirectoryError(ValueError):
    """The run directory is in use by a live run, or holds an earlier run's output that this run would replace."""


class MissingOfflinePackage(RuntimeError):
    """A built-in offline asset needs a package from requirements-offline.txt that is not installed."""


class NonFiniteUpdates(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


class BadReward(RuntimeError):
    """A reward term (policy_reward/terms.py) returned the wrong number of values, a non-number, NaN or inf."""


# what the game turns into a checkpoint and a stop, and apo_online/cli.py into "error: <message>" and exit status 3
GAME_FAULTS = (NonFiniteUpdates, BadReward)


# what apo_online/cli.py turns into "error: <message>" and exit status 2
BAD_INPUT = (ConfigError, DataFormatError, CheckpointError, RunDirectoryError, MissingOfflinePackage)
