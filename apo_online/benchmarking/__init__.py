"""The shared logic of the benchmarks under bench/: launching workers and reading their results (workers), and the
apo-online game a worker plays (apo_game). The scripts under bench/ are thin command lines over these modules and
never import one another; a worker still runs as its own process (a script launched by command line), so that each
measurement starts from a clean peak RSS. bench/trl_worker.py runs in a separate TRL venv and imports none of this."""
