"""`python -m apo_online RECIPE ...` and `accelerate launch -m apo_online RECIPE ...`: the console command's entry."""

import sys

from apo_online.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main())
