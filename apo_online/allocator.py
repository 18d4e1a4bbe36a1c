"""The memory allocator a game runs under: tcmalloc (else jemalloc) on Linux when installed, glibc's malloc otherwise.

glibc's malloc keeps the memory a phase frees (the RM update's activations, the rollout's caches) and the process
grows to its peak of peaks; tcmalloc and jemalloc hand it back. Measured side by side with TRL
(bench/README.md, "Allocators"): refit peak RSS 0.75x of glibc's with either, the step time within the noise.

An allocator can only replace malloc from the process's start, so the recipes and the `apo-online` command call
`use_preferred_allocator()` before importing anything heavy: when it finds a library to preload it executes the same
command line again (same process id, so launchers and schedulers see nothing) with the library in LD_PRELOAD.
Standard library only, for that reason.

    APO_ONLINE_ALLOCATOR=auto      (default) tcmalloc, else jemalloc, else glibc's malloc; Linux only
    APO_ONLINE_ALLOCATOR=tcmalloc  that one, or an error (status 2) when it is not installed; likewise jemalloc
    APO_ONLINE_ALLOCATOR=system    keep the allocator the process started with
An LD_PRELOAD that already names an allocator (the user's own choice, or this module's after its re-execution) is
kept as it is. Install one with `apt-get install libtcmalloc-minimal4` (or `libjemalloc2`; other distributions:
gperftools / jemalloc).
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV = "APO_ONLINE_ALLOCATOR"
# allocator -> the names ctypes.util.find_library looks up (as ldconfig knows them), first found wins
LIBRARIES = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
AUTO_ORDER = ("tcmalloc", "jemalloc")  # tcmalloc held the step time best (bench/README.md)
CHOICES = ("auto", "system", *LIBRARIES)
INSTALL_HINT = {"tcmalloc": "apt-get install libtcmalloc-minimal4", "jemalloc": "apt-get install libjemalloc2"}


class AllocatorChoiceError(ValueError):
    """APO_ONLINE_ALLOCATOR names no allocator, or one that is not installed."""


def preload_library(environ, platform: str = sys.platform, find=ctypes.util.find_library) -> str | None:
    """The library the process should be re-executed with in LD_PRELOAD, or None to keep the running allocator.
    environ: the environment (APO_ONLINE_ALLOCATOR, LD_PRELOAD); find: name -> soname or None."""
    choice = (environ.get(ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise AllocatorChoiceError(f"{ENV}={environ.get(ENV)!r}: expected one of {', '.join(CHOICES)}")
    if choice == "system" or not platform.startswith("linux"):
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if any(name in preloaded for name in ("malloc", *LIBRARIES)):  # already chosen, by the user or by us
        return None
    for allocator in AUTO_ORDER if choice == "auto" else (choice,):
        found = next((lib for lib in map(find, LIBRARIES[allocator]) if lib), None)
        if found:
            return found
    if choice != "auto":
        raise AllocatorChoiceError(f"{ENV}={choice}: no {choice} library is installed ({INSTALL_HINT[choice]}), "
                                   f"or choose {ENV}=auto or system")
    return None


def use_preferred_allocator() -> None:
    """Re-execute this command with the preferred allocator preloaded, if there is one to add (module docstring);
    a bad APO_ONLINE_ALLOCATOR ends the process with status 2 and one line."""
    try:
        library = preload_library(os.environ)
    except AllocatorChoiceError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if library is None:
        return
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD", "")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, dict(os.environ, LD_PRELOAD=preload))


def allocator_in_use() -> str:
    """Which allocator this process runs under, read from its memory map (Linux); 'glibc malloc' when none other."""
    try:
        with open("/proc/self/maps") as maps:
            mapped = maps.read()
    except OSError:
        return "the platform's malloc"
    for allocator in LIBRARIES:
        if f"lib{allocator}" in mapped:
            return f"{allocator} (LD_PRELOAD; {ENV}=system keeps glibc's malloc)"
    return "glibc malloc"
