"""Stop requests: how SIGTERM / SIGINT reach the game under each launcher, and what a repeated signal means.

What each launcher does with a signal sent to it (accelerate 1.15, torch 2.x; tests/test_stops.py):
  python recipes/X.py          there is no launcher: the game gets the signal itself.
  accelerate launch, 1 process accelerate/commands/launch.py `simple_launcher` only waits on the game; it has no
                               handler, so SIGTERM ends it at once (status 143) and forwards nothing. The game
                               therefore asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG): it
                               finishes its step, writes its checkpoint and exits, after the launcher is gone.
  accelerate launch, several / torchrun
                               the elastic agent forwards SIGTERM / SIGINT to every process, waits for them (up to
                               TORCH_ELASTIC_SHUTDOWN_TIMEOUT s, then SIGKILL) and exits with status 1.
  a container whose PID 1 is the one-process launcher
                               the kernel drops every signal PID 1 has no handler for: nothing reaches the game and
                               the runtime's SIGKILL ends it without a checkpoint. Warned at start.
A stop is often delivered more than once: Ctrl-C reaches the launcher and the game, the agent forwards it again, the
launcher's death adds SIGTERM (seconds later: a dying launcher prints its traceback first). So a repeat within
REPEAT_WINDOW_S of the first signal, or a SIGTERM once the launcher is gone, is the same stop; any other signal
after the first aborts at once, without a checkpoint (KeyboardInterrupt).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from pathlib import Path

logger = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
LAUNCHER_PROGRAMS = ("accelerate", "torchrun", "deepspeed")  # console scripts
LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch")  # python -m ...
_followed_launcher: int | None = None  # pid of the launcher whose death sends this process SIGTERM


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def parent_is_launcher() -> bool:
    """Whether this process was started by accelerate launch, torchrun or deepspeed (read from /proc)."""
    words = _command_line(os.getppid()) + ["", "", ""]  # program, or: python program | python -m module
    if any(os.path.basename(word) in LAUNCHER_PROGRAMS for word in words[:2]):
        return True
    return words[1] == "-m" and words[2] in LAUNCHER_MODULES


def follow_launcher() -> bool:
    """Under a launcher: get SIGTERM when the launcher dies, so that the game never runs on as an orphan (the
    one-process launcher dies at once on SIGTERM without forwarding it). Without a launcher nothing is set: a run
    started with `python` under `nohup` must survive its shell. Returns whether the death signal was set."""
    if not parent_is_launcher():
        return False
    if os.getppid() == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        logger.warning("the launcher is PID 1 (a container's first process): the kernel drops a SIGTERM sent to it, "
                       "as it has no handler, so a container stop cannot reach the game and it ends without a "
                       "checkpoint; make `python recipes/<recipe>.py ...` the container's command instead")
    global _followed_launcher
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError) as err:  # not Linux
        logger.warning("cannot ask for a signal when the launcher dies (%s): if it dies, the game runs on", err)
        return False
    _followed_launcher = parent
    if os.getppid() != parent:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def launcher_gone() -> bool:
    """Whether the launcher this process follows has died (its SIGTERM then is the death signal)."""
    return _followed_launcher is not None and os.getppid() != _followed_launcher


class StopRequests:
    """SIGTERM / SIGINT handlers for the length of the game: the first signal asks for a stop at the next step
    boundary (`on_stop(signum)` is called); a repeat within REPEAT_WINDOW_S, or the launcher's death signal, is
    the same stop; any other signal aborts."""

    REPEAT_WINDOW_S = 5.0

    def __init__(self, on_stop):
        self.on_stop = on_stop
        self.signal: int | None = None
        self._first_at = 0.0
        self._previous: dict = {}

    def install(self) -> None:
        """Main thread only (Python's rule); elsewhere signals keep their handlers."""
        try:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not in the main thread
            pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signal is None:
            self.signal, self._first_at = signum, now
            logger.warning("signal %d: stopping after this step with a checkpoint (send it again after %.0f s to "
                           "abort at once)", signum, self.REPEAT_WINDOW_S)
            self.on_stop(signum)
        elif now - self._first_at < self.REPEAT_WINDOW_S or (signum == signal.SIGTERM and launcher_gone()):
            logger.info("signal %d %.1f s after signal %d: the same stop, delivered again", signum,
                        now - self._first_at, self.signal)
        else:
            raise KeyboardInterrupt(f"second signal {signum}: aborting without a checkpoint")
