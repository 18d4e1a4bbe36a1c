"""Stops with the README's commands, signalled from outside as a scheduler, a container runtime or a user would:

  accelerate launch recipes/apo_ppo.py ...                                         (one process)
  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/apo_ppo.py ...

After each stop a checkpoint of the last finished step exists, no process of the run is left, and the launcher's
exit status says what happened (as far as the launcher lets it: see the fault table of docs/faults_and_resume.md).
While a run lives, a second run on its directory stops at once with status 2, naming the live process, and touches
nothing."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from apo_online.run import stopping
from apo_online.game import APOGame
from apo_online.run.directory import LOCK_FILE
from apo_online.run.log import progress_postfix, read_metrics
from conftest import PYTHON, REPO, python_env, tiny_overrides
from test_resume import free_port

RECIPE = "recipes/apo_ppo.py"


def run_args(output) -> list[str]:
    """A tiny game far too long to finish during the test: it only ends by being stopped."""
    return tiny_overrides(output, **{"game.total_steps": 500, "game.save_every": 0, "rollout.prompts_per_step": 2,
                                     "rm.steps_per_update": 1, "ppo.num_minibatches": 1})


def start(output: Path, num_processes: int = 1) -> subprocess.Popen:
    """The README's command in a session of its own (so that a Ctrl-C can be sent to its process group)."""
    env = python_env() | {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}  # slow CI: leave the workers time to checkpoint
    command = ["accelerate", "launch"]
    if num_processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        command += ["--multi_gpu", "--num_processes", str(num_processes), "--main_process_port", str(free_port())]
    log = open(output.parent / f"{output.name}.log", "w")
    # SIGINT at its default, as in a terminal: a test session started in the background (`cmd &` in a script)
    # inherits SIGINT ignored, and the launcher would then ignore the Ctrl-C these tests send
    return subprocess.Popen(command + [RECIPE] + run_args(output), cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def log_of(output: Path) -> str:
    return (output.parent / f"{output.name}.log").read_text(errors="replace")


def last_step(output: Path) -> int:
    return max((r["step"] for r in read_metrics(output / "metrics.jsonl")), default=-1)


def wait_for_step(output: Path, step: int, launcher: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while last_step(output) < step:
        assert launcher.poll() is None, f"the run ended early ({launcher.returncode}):\n{log_of(output)[-4000:]}"
        assert time.monotonic() < deadline, f"no step {step} after {timeout} s:\n{log_of(output)[-4000:]}"
        time.sleep(0.5)


def run_processes(output: Path) -> list[int]:
    """Live processes whose command line names the run's output directory: the launcher and the game processes."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(output).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return found


def wait_until_gone(output: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while run_processes(output):
        assert time.monotonic() < deadline, f"still alive after {timeout} s: {run_processes(output)}"
        time.sleep(0.5)


def kill_leftovers(output: Path) -> None:
    for pid in run_processes(output):
        os.kill(pid, signal.SIGKILL)


def lock_holder(output: Path) -> dict:
    return json.loads((output / LOCK_FILE).read_text())


def assert_stopped_with_a_checkpoint(output: Path, signum: int, num_processes: int = 1) -> int:
    """The stop's checkpoint is of the last logged step, there is no final/, and the lock was released."""
    stopped_at = last_step(output)
    meta = json.loads((output / "checkpoints" / f"step-{stopped_at:06d}" / "meta.json").read_text())
    assert (meta["step"], meta["reason"], meta["num_processes"]) == (stopped_at, "signal", num_processes)
    assert not (output / "final").exists()
    assert lock_holder(output)["state"].startswith("ended")
    line = f"stopped by signal {signum} after step {stopped_at}; checkpoint: {output / 'checkpoints'}"
    assert log_of(output).count(line) == num_processes, log_of(output)[-4000:]  # one line per game process
    return stopped_at


def deliver(requests: stopping.StopRequests, *signals) -> None:
    requests.install()
    try:
        for signum in signals:
            os.kill(os.getpid(), signum)
    finally:
        requests.restore()


def test_the_launchers_death_signal_is_the_same_stop_however_late(monkeypatch):
    """A dying launcher may take seconds to print its traceback before the kernel sends the game SIGTERM."""
    monkeypatch.setattr(stopping.StopRequests, "REPEAT_WINDOW_S", 0.0)
    monkeypatch.setattr(stopping, "_followed_launcher", os.getppid())
    stops = []
    requests = stopping.StopRequests(stops.append)
    deliver(requests, signal.SIGINT)
    monkeypatch.setattr(stopping, "_followed_launcher", -1)  # the launcher has died since: the game was re-parented
    deliver(requests, signal.SIGTERM, signal.SIGTERM)
    assert stops == [signal.SIGINT] and requests.signal == signal.SIGINT
    with pytest.raises(KeyboardInterrupt, match="second signal 2"):  # a user's second Ctrl-C still aborts
        deliver(requests, signal.SIGINT)


def test_without_a_launcher_a_late_repeat_aborts(monkeypatch):
    monkeypatch.setattr(stopping.StopRequests, "REPEAT_WINDOW_S", 0.0)
    monkeypatch.setattr(stopping, "_followed_launcher", None)  # started with python: no death signal to expect
    requests = stopping.StopRequests(lambda signum: None)
    deliver(requests, signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="second signal 15"):
        deliver(requests, signal.SIGTERM)


@pytest.mark.parametrize("command, launcher", [
    (["/usr/bin/python3", "/usr/local/bin/accelerate", "launch", "recipes/apo_ppo.py"], True),
    (["/usr/local/bin/torchrun", "--nproc_per_node", "2", "train.py"], True),
    (["python", "-m", "torch.distributed.run", "train.py"], True),
    (["/bin/bash"], False),
    (["python", "train.py", "accelerate"], False),  # only the program or module counts, not its arguments
    ([], False),  # the parent is already gone
])
def test_launchers_are_told_from_their_command_line(monkeypatch, command, launcher):
    monkeypatch.setattr(stopping, "_command_line", lambda pid: command)
    assert stopping.parent_is_launcher() is launcher


@pytest.mark.slow
def test_one_process_launch_refuses_a_second_run_then_stops_on_sigterm_with_a_checkpoint(tmp_path, tiny_model_path):
    output = tmp_path / "run"
    launcher = start(output)
    try:
        wait_for_step(output, 2, launcher)
        game = lock_holder(output)
        assert game["pid"] != launcher.pid and game["host"] == socket.gethostname()
        first_lines = (output / "metrics.jsonl").read_text().splitlines()[:3]

        started = time.monotonic()
        second = subprocess.run([PYTHON, RECIPE] + run_args(output), cwd=REPO, env=python_env(), capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        assert time.monotonic() - started < 60  # before any model is loaded
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {output} is in use by a live run: pid {game['pid']} on host {game['host']} "
                          f"(started {game['started']}, running; command: {game['command']}); wait for it to end (or "
                          f"stop it), or choose another game.output_dir"]
        assert (output / "metrics.jsonl").read_text().splitlines()[:3] == first_lines  # not truncated
        assert lock_holder(output) == game and launcher.poll() is None

        # accelerate's one-process launcher dies at once on SIGTERM (143) and forwards nothing; the game gets
        # SIGTERM from the kernel as its parent dies, finishes its step, writes the checkpoint and exits
        os.kill(launcher.pid, signal.SIGTERM)
        assert launcher.wait(timeout=30) == -signal.SIGTERM  # the shell shows 143
        wait_until_gone(output)
    finally:
        kill_leftovers(output)
    assert_stopped_with_a_checkpoint(output, signal.SIGTERM)


@pytest.mark.slow
def test_ctrl_c_to_a_one_process_launch_is_one_stop_with_a_checkpoint(tmp_path, tiny_model_path):
    """Ctrl-C reaches the launcher and the game; the launcher dies of it, which sends the game SIGTERM as well: the
    repeat is the same stop, not a second signal that would abort without a checkpoint."""
    output = tmp_path / "run"
    launcher = start(output)
    try:
        wait_for_step(output, 2, launcher)
        os.killpg(launcher.pid, signal.SIGINT)  # what a terminal does: the whole foreground process group
        assert launcher.wait(timeout=30) == -signal.SIGINT  # KeyboardInterrupt traceback; the shell shows 130
        wait_until_gone(output)
    finally:
        kill_leftovers(output)
    assert_stopped_with_a_checkpoint(output, signal.SIGINT)
    assert "aborting without a checkpoint" not in log_of(output)


@pytest.mark.slow
def test_two_process_launch_stops_on_sigterm_with_a_checkpoint(tmp_path, tiny_model_path):
    output = tmp_path / "run"
    launcher = start(output, num_processes=2)
    try:
        wait_for_step(output, 2, launcher)
        os.kill(launcher.pid, signal.SIGTERM)
        # torch's elastic agent forwards SIGTERM to both processes, waits for them, then exits with status 1
        assert launcher.wait(timeout=400) == 1
        assert "SignalException: Process" in log_of(output)
        wait_until_gone(output, timeout=30)
    finally:
        kill_leftovers(output)
    assert_stopped_with_a_checkpoint(output, signal.SIGTERM, num_processes=2)


class _SignalDuringCollective:
    """A process's all-reduce of the stop flag, with the signal's handler running after the process contributed its
    value (the other processes contributed 0): the sum says nobody was signalled yet."""

    def __init__(self, game):
        self.game = game

    def global_sum(self, value: float) -> float:
        self.game.stop_signal = signal.SIGTERM  # the handler ran mid-collective
        return value


def test_every_process_stops_on_the_agreed_sum_only():
    """A signal landing mid-collective on one process must not stop that process alone: it would checkpoint while
    the others play the next step, and the run would hang until the launcher SIGKILLs it (CI, stop 21)."""
    game = SimpleNamespace(stop_signal=None)
    game.ctx = _SignalDuringCollective(game)
    assert APOGame._stop_agreed(game) is False  # the signal counts at the next step boundary, for every process
    assert game.stop_signal == signal.SIGTERM
    assert APOGame._stop_agreed(game) is True


def test_progress_bar_shows_only_the_metrics_a_step_logged():
    ppo_step = {"objective/scores": 1.23456, "objective/kl": 0.5, "ppo/policy_loss": 0.1}
    rjs_step = {"objective/scores": -2.0, "rjs/sft_loss": 3.0}  # RJS rollouts carry no reference log-probs: no KL
    assert progress_postfix(ppo_step) == {"score": "1.235", "kl": "0.500"}
    assert progress_postfix(rjs_step) == {"score": "-2.000"}
