"""Safe run folders: atomic file writing, one writer per folder, and Ctrl-C at a safe point.

* :func:`atomic_write` — a crash never leaves a half-written result or checkpoint;
* :func:`run_lock` — a run folder is created, checked writable and locked before any work, so two
  runs never write into one folder and a bad ``--out`` fails at once, not after the run;
* :class:`InterruptGuard` — the first Ctrl-C of a checkpointed loop is honoured at its next
  snapshot (written, then ``KeyboardInterrupt``), so an interrupt loses no work.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
import tempfile
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should be readable like any other
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunFolderError(ValueError):
    """A run folder that cannot be used: not a folder, not writable, or in use by another process."""


LOCK_NAME = ".lock"


def _make_folder(folder: Path) -> bool:
    """Create ``folder`` (and its parents); True if it did not exist. One-line errors for the usual mistakes."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"run folder {folder} is a file, not a folder; choose another --out")
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunFolderError(f"cannot create run folder {folder}: a part of its path is a file") from None
    except OSError as err:
        raise RunFolderError(f"cannot create run folder {folder}: {err.strerror}") from None
    return not existed


def _lock_file(folder: Path) -> int:
    """Open and lock ``folder/.lock`` (non-blocking); its descriptor, with this process's pid written in it."""
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunFolderError(f"run folder {folder} is not writable ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise RunFolderError(f"cannot lock run folder {folder} ({err.strerror})") from None
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"run folder {folder} is in use by another boltzflow process (pid {holder}); wait for it to "
                "finish or choose another --out"
            ) from None
        try:  # the holder we waited on may have removed the file as it released: lock the file that is there
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold a run folder for one process: create it, lock it, check that it takes files.

    The lock is an ``flock`` on ``folder/.lock`` holding the owner's pid. It is taken without waiting,
    so a second process gets :class:`RunFolderError` at once; it belongs to the open file, so a process
    that dies (even by ``kill -9``) releases it and a rerun of the same command takes over. On a clean
    exit the lock file is removed, and a folder this call created that is still empty is removed too.

    Parameters
    ----------
    folder : path
        The run folder (created with its parents when missing).

    Yields
    ------
    Path
        The folder.

    Raises
    ------
    RunFolderError
        If ``folder`` is a file or lies below one, cannot be created or written, or is locked by
        another process — before any work is done.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> with run_lock(out) as folder:
    ...     with run_lock(out):
    ...         pass
    Traceback (most recent call last):
    ...
    boltzflow.io.RunFolderError: run folder ... is in use by another boltzflow process (pid ...); ...
    >>> out.exists()
    False
    """
    folder = Path(folder)
    created = _make_folder(folder)
    fd = _lock_file(folder)
    try:
        try:
            probe, probe_path = tempfile.mkstemp(dir=folder, prefix=".write-test.")
            os.close(probe)
            os.unlink(probe_path)
        except OSError as err:
            raise RunFolderError(f"run folder {folder} is not writable ({err.strerror})") from None
        yield folder
    finally:
        try:
            os.unlink(folder / LOCK_NAME)  # while still locked: a waiting process re-checks the file it locked
            if created:
                folder.rmdir()  # only succeeds if nothing was written
        except OSError:
            pass
        os.close(fd)


class _GuardState:
    """What the signal handler of an :class:`InterruptGuard` needs; kept apart so the guard can be freed."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None
        self.handler: Callable[[int, FrameType | None], None] | None = None
        self.frame_id = 0
        self.code: Any = None

    def running(self, frame: FrameType | None) -> bool:
        """True if the guarded function is on the stack of ``frame``."""
        while frame is not None:
            if id(frame) == self.frame_id and frame.f_code is self.code:
                return True
            frame = frame.f_back
        return False

    def restore(self) -> None:
        """Put the previous SIGINT handler back if ours is still installed."""
        if self.handler is not None and signal.getsignal(signal.SIGINT) is self.handler:
            signal.signal(signal.SIGINT, self.previous)
        self.handler = None


class InterruptGuard:
    """Turn the first Ctrl-C during a checkpointed loop into a request to stop at its next snapshot.

    :meth:`arm` installs a SIGINT handler (only in the main thread, and only over Python's default
    one or a guard left behind by a function that has ended, so a user's own handler and the guard of
    an enclosing loop are left alone). The first Ctrl-C sets :attr:`requested`; the loop
    sees it at its next safe point, writes its snapshot and calls :meth:`honour`, which raises
    ``KeyboardInterrupt``. A second Ctrl-C raises at once. A Ctrl-C after the guarded function has
    returned (its frame is gone from the stack) raises at once too, and the old handler is restored
    by :meth:`disarm`, by :meth:`honour`, or when the guard is garbage-collected.

    Examples
    --------
    >>> guard = InterruptGuard()
    >>> guard.arm()
    >>> guard.requested
    False
    >>> guard.honour()  # nothing requested: returns
    >>> guard.disarm()
    """

    def __init__(self) -> None:
        self._state = _GuardState()
        weakref.finalize(self, self._state.restore)

    @property
    def requested(self) -> bool:
        """True once a Ctrl-C asked the guarded loop to stop at its next snapshot."""
        return self._state.requested

    def arm(self, stacklevel: int = 1) -> None:
        """Defer Ctrl-C while the function ``stacklevel`` frames up (1: the caller) runs; idempotent.

        Parameters
        ----------
        stacklevel : int
            Which caller is guarded, as in :func:`warnings.warn`.
        """
        state = self._state
        if state.handler is not None or threading.current_thread() is not threading.main_thread():
            return
        frame = sys._getframe(stacklevel)
        left_behind = getattr(signal.getsignal(signal.SIGINT), "guard_state", None)
        if left_behind is not None and not left_behind.running(frame):
            left_behind.restore()  # a guard whose function ended by an exception still held in a traceback
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return  # a user's handler, or a guard of an enclosing loop that is still running
        state.requested, state.frame_id, state.code = False, id(frame), frame.f_code

        def handler(signum: int, frame: FrameType | None) -> None:
            if state.requested or not state.running(frame):
                state.restore()
                raise KeyboardInterrupt
            state.requested = True
            print("\ninterrupt: stopping at the next checkpoint (Ctrl-C again to stop at once)", file=sys.stderr,
                  flush=True)

        handler.guard_state = state  # type: ignore[attr-defined]
        state.previous, state.handler = signal.getsignal(signal.SIGINT), handler
        signal.signal(signal.SIGINT, handler)

    def disarm(self) -> None:
        """Restore the previous SIGINT handler (the loop has ended)."""
        self._state.restore()

    def honour(self) -> None:
        """After a snapshot: raise ``KeyboardInterrupt`` if a Ctrl-C asked to stop, else return."""
        if self._state.requested:
            self._state.restore()
            raise KeyboardInterrupt
