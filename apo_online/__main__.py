"""`python -m apo_online RECIPE ...` and `accelerate launch -m apo_online RECIPE ...`: the console command's entry."""

import sys

from apo_online.allocator import use_preferred_allocator


def run() -> int:
    """The `apo-online` console command: the preferred allocator first (a re-exec, before torch loads), then the
    recipe."""
    use_preferred_allocator()
    from apo_online.cli import console_main

    return console_main()


if __name__ == "__main__":
    sys.exit(run())
