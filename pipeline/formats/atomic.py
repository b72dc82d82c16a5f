"""Safe output: one writer per output, written to a temporary file beside it, renamed when complete.

Every output is guarded by ``<output>.lock`` (:func:`output_lock`): an exclusive ``fcntl.flock`` held
for the whole write, with the holder's pid written in the file. A second process that wants to write
the same output is refused at once (:class:`OutputLockedError`, naming the output and the holder)
instead of racing the first one for the final name.

:func:`atomic_path` writes through a temporary file ``.<name>.<pid>.<random><suffix>`` in the
output's folder; on success the file is flushed to disk (fsync), renamed over the output only if it
is still the file this process created (same device and inode), and the folder is synced so the
rename survives a power cut. Temporary files of the same output left by a process that is no longer
alive (a hard kill) are removed when the next writer starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Iterator


class OutputLockedError(ValueError):
    """Another process is writing the same output (a ValueError so the CLI reports it as one line)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file guarding ``path``: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


# Locks this process holds, by the output's absolute path: count of nested holders and the lock's fd.
# flock conflicts between two open file descriptions even within one process, so a nested writer of
# the same output (a stage holding its output's lock while a format writer writes it) shares the fd.
_held: dict[str, list[int]] = {}
_held_guard = threading.Lock()


def _key(path: Path) -> str:
    return os.path.join(os.path.realpath(path.parent), path.name)


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _acquire(path: Path) -> int:
    lock = lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputLockedError(
                f"{path}: being written by another process (pid {_holder(lock)}, lock file {lock}); "
                "wait for it to finish or stop it"
            ) from None
        # The holder before us may have removed the lock file between our open and our flock: then we
        # locked a file no longer under that name, and a third process could lock the new one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<path>.lock`` exclusively for the block (re-entrant within this process).

    Raises:
        OutputLockedError: another process holds it (the message names ``path`` and the holder's pid).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = _key(path)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[0] += 1
        else:
            _held[key] = [1, _acquire(path)]
    try:
        yield lock_path(path)
    finally:
        with _held_guard:
            entry = _held[key]
            entry[0] -= 1
            if entry[0] == 0:
                del _held[key]
                # Removed while still locked: a process waiting on this file finds it gone (see _acquire).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path(path))
                os.close(entry[1])


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _temp_pattern(target: Path) -> re.Pattern:
    # mkstemp's random part: 8 characters of [a-z0-9_]
    return re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[a-z0-9_]{{8}}(\..*)?$")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` whose writer is dead (by name pattern and pid); returns them.

    Only files named like :func:`private_temp`'s, and only where the pid in the name is not a live
    process nor this one; call it while holding :func:`output_lock`.
    """
    target = Path(path)
    pattern = _temp_pattern(target)
    removed = []
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return removed
    prefix = f".{target.name}."
    for name in names:
        match = pattern.match(name) if name.startswith(prefix) else None
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _process_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target.parent / name)
            removed.append(target.parent / name)
    return removed


def private_temp(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """Create an empty temporary file ``.<name>.<pid>.<random><suffix>`` beside ``path``.

    Its permissions are those a plain ``open()`` gives (mkstemp's are 0600).
    """
    target = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(fd)


def replace_own(tmp: str | os.PathLike, target: str | os.PathLike, identity: os.stat_result) -> None:
    """fsync ``tmp``, rename it over ``target`` if it is still the file ``identity`` describes, fsync the folder.

    Raises:
        OSError: ``tmp`` was replaced or removed by someone else (nothing is renamed then).
    """
    tmp, target = Path(tmp), Path(target)
    try:
        current = os.stat(tmp)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"{target}: temporary file {tmp} vanished before the rename") from None
    if not os.path.samestat(current, identity):
        raise OSError(errno.ESTALE, f"{target}: temporary file {tmp} is not the one this process wrote; not renamed")
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``.

    The output's lock is held for the block (:func:`output_lock`; another writer of ``path`` raises
    :class:`OutputLockedError` at once), stale temporary files of ``path`` are removed first, and the
    rename is durable (file and folder fsynced). On an exception the temporary file is removed and
    ``path`` is left as it was.
    """
    target = Path(path)
    with output_lock(target):
        remove_stale_temps(target)
        tmp = private_temp(target, suffix if suffix is not None else ".tmp")
        identity = os.stat(tmp)
        try:
            yield tmp
            replace_own(tmp, target, identity)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.stat(tmp), identity):
                    tmp.unlink()
            raise
