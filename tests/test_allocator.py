"""APO_ONLINE_ALLOCATOR (apo_online/allocator.py): which allocator a recipe re-executes itself under, and that the
re-execution really swaps the allocator of the same process."""

import ctypes.util
import subprocess
import sys

import pytest

from apo_online.allocator import AllocatorChoiceError, preload_library
from conftest import PYTHON, REPO, python_env

BOTH = {"tcmalloc_minimal": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}


def finder(installed: dict):
    return lambda name: installed.get(name)


@pytest.mark.parametrize("environ, platform, installed, expected", [
    ({}, "linux", BOTH, "libtcmalloc_minimal.so.4"),  # auto: tcmalloc first
    ({"APO_ONLINE_ALLOCATOR": "auto"}, "linux", {"jemalloc": "libjemalloc.so.2"}, "libjemalloc.so.2"),
    ({"APO_ONLINE_ALLOCATOR": "JeMalloc "}, "linux", BOTH, "libjemalloc.so.2"),  # named: that one
    ({"APO_ONLINE_ALLOCATOR": "tcmalloc"}, "linux", {"tcmalloc": "libtcmalloc.so.4"}, "libtcmalloc.so.4"),
    ({}, "linux", {}, None),  # none installed: glibc's malloc, no re-exec
    ({"APO_ONLINE_ALLOCATOR": "system"}, "linux", BOTH, None),
    ({}, "darwin", BOTH, None),  # Linux only
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "linux", BOTH, None),  # after our re-exec: no loop
    ({"LD_PRELOAD": "/opt/lib/libmimalloc.so"}, "linux", BOTH, None),  # the user's own allocator stays
])
def test_which_library_is_preloaded(environ, platform, installed, expected):
    assert preload_library(environ, platform, finder(installed)) == expected


def test_a_named_allocator_that_is_missing_or_unknown_is_an_error():
    with pytest.raises(AllocatorChoiceError, match=r"jemalloc: no jemalloc library is installed \(apt-get install "
                                                   r"libjemalloc2\)"):
        preload_library({"APO_ONLINE_ALLOCATOR": "jemalloc"}, "linux", finder({}))
    with pytest.raises(AllocatorChoiceError, match="expected one of auto, system, tcmalloc, jemalloc"):
        preload_library({"APO_ONLINE_ALLOCATOR": "hoard"}, "linux", finder(BOTH))


def test_the_recipe_refuses_a_bad_choice_with_status_2():
    env = python_env() | {"APO_ONLINE_ALLOCATOR": "hoard"}
    result = subprocess.run([PYTHON, "recipes/apo_ppo.py", "--help"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: APO_ONLINE_ALLOCATOR='hoard': expected one of auto, system, tcmalloc, "
                                     "jemalloc")


SCRIPT = """
import os, sys
print("before", os.getpid(), file=sys.stderr, flush=True)
from apo_online.allocator import allocator_in_use, use_preferred_allocator
use_preferred_allocator()
print(os.getpid(), allocator_in_use())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("tcmalloc_minimal"),
                    reason="needs Linux with tcmalloc installed (apt-get install libtcmalloc-minimal4)")
@pytest.mark.parametrize("choice, expected", [("auto", "tcmalloc"), ("system", "glibc malloc")])
def test_the_process_reexecutes_itself_under_the_allocator(choice, expected):
    env = python_env() | {"APO_ONLINE_ALLOCATOR": choice}
    env.pop("LD_PRELOAD", None)
    result = subprocess.run([PYTHON, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pid, allocator = result.stdout.strip().split(" ", 1)
    assert allocator.startswith(expected)
    # the same process id throughout (launchers and schedulers follow it), started twice with a re-exec
    starts = [line.split() for line in result.stderr.splitlines() if line.startswith("before")]
    assert [s[1] for s in starts] == [pid] * (2 if choice == "auto" else 1)
