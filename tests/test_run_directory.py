"""The run directory: one live run at a time (a lock the kernel drops when its holder dies, so a killed run's lock
is taken over), and a fresh start never replaces an earlier run's output unless asked to."""

import json
import logging
import os
import signal
import socket
import subprocess
from types import SimpleNamespace

import pytest

from apo_online.config import GameConfig
from apo_online.run.directory import LOCK_FILE, RunDirectoryError, RunLock, claim_run_directory
from conftest import PYTHON, REPO, python_env

HOLD_LOCK = ("import sys, time\n"
             "from apo_online.run.directory import RunLock\n"
             "RunLock.acquire(sys.argv[1])\n"
             "print('locked', flush=True)\n"
             "time.sleep(600)\n")
ONE_PROCESS = SimpleNamespace(is_main_process=True, num_processes=1)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run; killed with SIGKILL at the end if still alive."""
    process = subprocess.Popen([PYTHON, "-c", HOLD_LOCK, str(tmp_path / "run")], cwd=REPO, env=python_env(),
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_live_holder_refuses_a_second_run_naming_its_pid_and_host(tmp_path, holder):
    with pytest.raises(RunDirectoryError) as info:
        RunLock.acquire(tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'run'} is in use by a live run: pid {holder.pid} on host "
                              f"{socket.gethostname()} (started ")
    assert "running; command: -c" in message and message.endswith("or choose another game.output_dir")
    # the refused contender left the holder's description as it was
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == holder.pid


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, holder, caplog):
    holder.send_signal(signal.SIGKILL)  # no cleanup: the lock file still names the dead holder
    holder.wait()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["state"] == "running"
    with caplog.at_level(logging.WARNING, logger="apo_online.run.directory"):
        lock = RunLock.acquire(tmp_path / "run")
    try:
        assert f"taking over the lock of pid {holder.pid} on host {socket.gethostname()}" in caplog.text
        assert "that run is gone without releasing it" in caplog.text
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["state"].startswith("ended")


def test_a_lock_released_normally_is_taken_without_a_warning(tmp_path, caplog):
    RunLock.acquire(tmp_path).release()
    with caplog.at_level(logging.WARNING, logger="apo_online.run.directory"):
        lock = RunLock.acquire(tmp_path)
    lock.release()
    assert "taking over" not in caplog.text


def test_games_of_one_process_share_the_lock_until_the_last_releases_it(tmp_path):
    first, second = RunLock.acquire(tmp_path), RunLock.acquire(tmp_path)
    assert first is second
    first.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["state"] == "running"  # still held for the second game
    second.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["state"].startswith("ended")


# ---------------------------------------------------------------------------------------------------------------------
# fresh starts over an earlier run's output
# ---------------------------------------------------------------------------------------------------------------------
def earlier_run(output):
    """What a run stopped after step 3 leaves: metrics, TensorBoard events and one complete checkpoint."""
    (output / "checkpoints" / "step-000002").mkdir(parents=True)
    (output / "checkpoints" / "step-000002" / "meta.json").write_text(json.dumps({"step": 2}))
    (output / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "x": 1.0}) + "\n" for s in range(4)))
    (output / "tensorboard").mkdir()
    (output / "tensorboard" / "events.out.tfevents.1").write_bytes(b"events")
    return sorted(p.relative_to(output) for p in output.rglob("*"))


def claim(output, **game):
    lock, resume = claim_run_directory(GameConfig(output_dir=str(output), **game), ONE_PROCESS)
    lock.release()
    return resume


def test_a_fresh_start_over_an_earlier_run_is_refused_and_deletes_nothing(tmp_path):
    before = earlier_run(tmp_path)
    with pytest.raises(RunDirectoryError) as info:
        claim(tmp_path)
    assert str(info.value) == (
        f"{tmp_path} already holds the output of an earlier run: checkpoints/ (1: step-000002), metrics.jsonl "
        f"(steps 0-3), tensorboard/; to continue it, pass --game.resume_from_checkpoint latest; to start over, pass "
        f"--game.overwrite_output_dir true (deletes them), or choose another game.output_dir")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != LOCK_FILE) == before


def test_latest_without_a_complete_checkpoint_over_an_earlier_run_is_refused(tmp_path):
    earlier_run(tmp_path)
    (tmp_path / "checkpoints" / "step-000002" / "meta.json").unlink()  # killed while writing its first checkpoint
    with pytest.raises(RunDirectoryError, match=r"--game.resume_from_checkpoint latest: no complete checkpoint in "
                                                r".*checkpoints, but .* holds the output of an earlier run that "
                                                r"stopped before its first one: checkpoints/"):
        claim(tmp_path, resume_from_checkpoint="latest")
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 4


def test_resuming_claims_the_checkpoint_and_deletes_nothing(tmp_path):
    before = earlier_run(tmp_path)
    assert claim(tmp_path, resume_from_checkpoint="latest") == tmp_path / "checkpoints" / "step-000002"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != LOCK_FILE) == before


def test_overwrite_deletes_exactly_the_earlier_runs_output_and_logs_it(tmp_path, caplog):
    earlier_run(tmp_path)
    (tmp_path / "rm_eval").mkdir()  # not run output: an eval script's results stay
    with caplog.at_level(logging.WARNING, logger="apo_online.run.directory"):
        assert claim(tmp_path, overwrite_output_dir=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_FILE, "rm_eval"])
    assert caplog.text.count("game.overwrite_output_dir: deleting") == 3


def test_an_empty_or_new_directory_starts_without_questions(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoints").mkdir()  # an empty folder is no output
    (tmp_path / "old" / "metrics.jsonl").write_text("")
    assert claim(tmp_path / "old") is None and claim(tmp_path / "new", resume_from_checkpoint="latest") is None


def test_the_recipe_refuses_to_start_over_a_finished_run_unless_told_to(tmp_path, tiny_model_path, single_accelerator,
                                                                        capsys):
    from apo_online.cli import main
    from conftest import tiny_overrides

    def run(**extra):
        status = main(tiny_overrides(tmp_path, **({"game.total_steps": 0, "rm.warmup_steps": 1} | extra)),
                      default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml")
        return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]

    assert run() == (0, [])
    metrics = (tmp_path / "metrics.jsonl").read_text()
    status, errors = run()
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: {tmp_path} already holds the output of an earlier run: checkpoints/ (1: "
                                f"step-000000), final/, metrics.jsonl (steps 0-0), tensorboard/; to continue it")
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    assert run(**{"game.overwrite_output_dir": "true"}) == (0, [])


def test_a_file_system_without_locks_runs_unlocked_and_says_so(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="apo_online.run.directory"):
        lock = RunLock.acquire(tmp_path)
    assert "cannot lock .run.lock ([Errno 37] No locks available): nothing stops a second run" in caplog.text
    lock.note("stopping")
    lock.release()
