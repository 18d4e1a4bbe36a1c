"""The run directory (game.output_dir): one live run at a time, and nothing an earlier run wrote replaced unasked.

Lock. The main process holds an exclusive flock on <output_dir>/.run.lock for as long as the game runs, and writes
who it is into the file (pid, host, start time, command, state). A second run on the same directory stops at once
(RunDirectoryError, exit status 2) naming that process. The kernel drops a flock when its holder dies, however it
dies (kill -9 included), so a lock left by a killed run is stale by construction: the next run gets it, and logs
whose it was. On a network file system the lock is as good as its locking (NFS: the server drops a lost client's
locks when its lease expires). Not the `filelock` package: it opens the file with O_TRUNC, so a refused contender
would erase the holder's description before failing.

Fresh starts. A run that does not resume (no game.resume_from_checkpoint, or `latest` finding no complete
checkpoint) in a directory that already holds checkpoints, final adapters, metrics.jsonl or TensorBoard events is
refused, unless game.overwrite_output_dir is true: then exactly those are deleted first, each one logged.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from apo_online.run.checkpoint import checkpoint_root, resolve_resume_path
from apo_online.run.log import METRICS_FILE, read_metrics
from apo_online.errors import RunDirectoryError  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)
LOCK_FILE = ".run.lock"
# What a run leaves behind that a fresh start would overwrite or mix with its own.
RUN_OUTPUTS = ("checkpoints", "final", METRICS_FILE, "tensorboard")


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "a process that has not written its details yet"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')}, "
            f"{holder.get('state')}; command: {holder.get('command')})")


class RunLock:
    """An exclusive flock on <output_dir>/.run.lock. One per directory and process: a process that builds several
    games on one directory (notebooks, tests) shares it, and it is released when the last of them is done."""

    _held: dict[str, RunLock] = {}

    def __init__(self, path: Path, fd: int):
        self.path, self.fd, self.users = path, fd, 1
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                       "command": " ".join(sys.argv)[:300], "state": "running"}

    @classmethod
    def acquire(cls, output_dir: str | Path) -> RunLock:
        """Take the lock, or raise RunDirectoryError naming the live holder."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = (output_dir / LOCK_FILE).resolve()
        if str(path) in cls._held:
            lock = cls._held[str(path)]
            lock.users += 1
            return lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirectoryError(f"{output_dir} is in use by a live run: {describe_holder(holder)}; wait for it "
                                    f"to end (or stop it), or choose another game.output_dir") from None
        except OSError as err:  # a file system without flock (some network or FUSE ones): run, but say so
            os.close(fd)
            logger.warning("%s: cannot lock %s (%s): nothing stops a second run on this directory", output_dir,
                           LOCK_FILE, err)
            return cls(path, -1)
        previous = _read_holder(fd)
        lock = cls(path, fd)
        if previous and not str(previous.get("state", "")).startswith("ended"):
            elsewhere = previous.get("host") != lock.holder["host"]
            logger.warning("%s: taking over the lock of %s: that run is gone without releasing it (killed, or its "
                           "machine lost)%s", output_dir, describe_holder(previous),
                           "; or this file system does not share locks between hosts" if elsewhere else "")
        lock._write()
        cls._held[str(path)] = lock
        return lock

    def note(self, state: str) -> None:
        """Say what the run is doing, for the message a refused second run prints (e.g. stopping after a signal)."""
        self.holder["state"] = state
        self._write()

    def release(self) -> None:
        self.users -= 1
        if self.users > 0 or self.fd < 0:
            return
        self.note(f"ended {_now()}")
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1
        self._held.pop(str(self.path), None)

    def _write(self) -> None:
        if self.fd < 0:  # no lock on this file system
            return
        data = json.dumps(self.holder).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)


def _read_holder(fd: int) -> dict | None:
    try:
        holder = json.loads(os.pread(fd, 65536, 0).decode() or "null")
    except (ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


# ---------------------------------------------------------------------------------------------------------------------
# fresh starts
# ---------------------------------------------------------------------------------------------------------------------
def earlier_outputs(output_dir: str | Path) -> list[Path]:
    """The RUN_OUTPUTS of an earlier run present in output_dir (empty folders and files do not count)."""
    found = []
    for name in RUN_OUTPUTS:
        path = Path(output_dir) / name
        if (path.is_dir() and any(path.iterdir())) or (path.is_file() and path.stat().st_size > 0):
            found.append(path)
    return found


def _summary(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        if path.name == "checkpoints":
            names = sorted(p.name for p in path.iterdir())
            parts.append(f"checkpoints/ ({len(names)}: {', '.join(names[-3:])})")
        elif path.name == METRICS_FILE:
            steps = [r["step"] for r in read_metrics(path)]
            parts.append(f"{METRICS_FILE} (steps {min(steps)}-{max(steps)})" if steps else METRICS_FILE)
        else:
            parts.append(f"{path.name}/")
    return ", ".join(parts)


def check_fresh_start(game_config, resuming_latest: bool) -> None:
    """Refuse (or with game.overwrite_output_dir, clear) an earlier run's output before starting from scratch."""
    output_dir = Path(game_config.output_dir)
    found = earlier_outputs(output_dir)
    if not found:
        return
    if not game_config.overwrite_output_dir:
        if resuming_latest:
            reason = (f"--game.resume_from_checkpoint latest: no complete checkpoint in {checkpoint_root(output_dir)}, "
                      f"but {output_dir} holds the output of an earlier run that stopped before its first one: "
                      f"{_summary(found)}")
        else:
            reason = (f"{output_dir} already holds the output of an earlier run: {_summary(found)}; to continue it, "
                      f"pass --game.resume_from_checkpoint latest")
        raise RunDirectoryError(f"{reason}; to start over, pass --game.overwrite_output_dir true (deletes them), "
                                f"or choose another game.output_dir")
    for path in found:
        logger.warning("game.overwrite_output_dir: deleting %s of an earlier run", path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def claim_run_directory(game_config, accelerator) -> tuple[RunLock | None, Path | None]:
    """(the lock, the checkpoint to resume from or None). Collective: the main process takes the lock and checks
    the directory, then every process gets its verdict, so that all of them stop together or none does."""
    lock, resume_path, error = None, None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock.acquire(game_config.output_dir)
            resume_path = resolve_resume_path(game_config.resume_from_checkpoint, game_config.output_dir)
            if resume_path is None:
                check_fresh_start(game_config, resuming_latest=game_config.resume_from_checkpoint == "latest")
        except Exception as err:  # noqa: BLE001 - re-raised below, on every process alike
            error = err
            if lock is not None:
                lock.release()
                lock = None
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        verdict = broadcast_object_list([str(resume_path) if resume_path else None,
                                         f"{type(error).__name__}: {error}" if error else None])
        resume_path = Path(verdict[0]) if verdict[0] else None
        if error is None and verdict[1] is not None:
            raise RunDirectoryError(f"stopped with the main process, which says: {verdict[1]}")
    if error is not None:
        raise error
    return lock, resume_path
