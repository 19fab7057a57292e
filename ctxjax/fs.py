"""Files and directories written so that a crash, a kill or a full disk never leaves a half-written one in
place, and the temporaries such an interruption leaves are removed by the next run.

Temporaries are named `.<name>.tmp-<host>-<pid>-<random>` beside their target: a later writer removes those of
dead processes of its own host (never another host's, whose pids it cannot check on a shared file system).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from typing import Callable

from ctxjax.errors import InputError

_HOST = socket.gethostname().replace("-", "_")


def temp_prefix(name: str) -> str:
    return f".{name}.tmp-{_HOST}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporaries(directory: str, name: str = "") -> list[str]:
    """Paths in `directory` of temporaries (of target `name`, or of any target) whose writer on this host is
    gone."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    stale = []
    for entry in entries:
        target, sep, owner = entry.rpartition(".tmp-")
        if not sep or not entry.startswith(".") or (name and target != f".{name}"):
            continue
        host, _, rest = owner.partition("-")
        pid = rest.partition("-")[0]
        if host == _HOST and pid.isdigit() and not _pid_alive(int(pid)):
            stale.append(os.path.join(directory, entry))
    return stale


def remove_stale_temporaries(directory: str, name: str = "") -> None:
    for path in stale_temporaries(directory, name):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


def write_atomically(path: str, data: bytes) -> None:
    """Readers (other processes of a pod, a crashed run's successor) never see a half-written file, and a
    failed write (a full disk) leaves no temporary behind."""
    directory, name = os.path.dirname(path) or ".", os.path.basename(path)
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(directory, name)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(name))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_directory_atomically(target: str, fill: Callable[[str], None]) -> str:
    """Create (or replace) directory `target` by `fill(tmp)` on a temporary sibling renamed into place at the
    end: a failure or a kill leaves `target` as it was (the next call removes the leftovers)."""
    target = os.path.abspath(target)
    parent, name = os.path.dirname(target), os.path.basename(target)
    os.makedirs(parent, exist_ok=True)
    # A kill between the two renames below: put the old one back.
    for stale in stale_temporaries(parent, name):
        if not os.path.exists(target) and os.path.isdir(os.path.join(stale, name)):
            os.rename(os.path.join(stale, name), target)
    remove_stale_temporaries(parent, name)
    tmp = tempfile.mkdtemp(prefix=temp_prefix(name), dir=parent)
    try:
        fill(tmp)
        if os.path.exists(target):
            # Two renames: the old directory is moved into another temporary first, so that at every moment
            # `target` is either the old or the new whole directory, and the old one is removed last.
            old = tempfile.mkdtemp(prefix=temp_prefix(name), dir=parent)
            os.rename(target, os.path.join(old, name))
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def is_within(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or lies inside it (both resolved: symlinks and `..` do not fool it)."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def refuse_url(path: str, what: str) -> None:
    """One InputError for a URL (gs://, s3://, ...) where ctxjax needs a directory: it writes through the file
    system (os.path, atomic renames), so `gs://bucket/run` would silently become a local `./gs:/bucket/run`
    on each host, lost with the VM."""
    scheme, sep, rest = str(path).partition("://")
    if sep and scheme.isalnum():
        bucket = rest.split("/")[0] or "BUCKET"
        raise InputError(f"{what} {path} is a URL; ctxjax writes through the file system: mount the bucket "
                         f"(e.g. gcsfuse --implicit-dirs {bucket} /mnt/{bucket}) and pass the mounted path, "
                         f"e.g. /mnt/{bucket}/{rest.partition('/')[2] or 'run'}")


def ensure_writable_directory(path: str, what: str) -> None:
    """Create `path` if needed and prove a file can be written in it, or one InputError saying why (a URL, it
    is a file, it is read-only, the disk is full) — before hours of compiling and training, not at the first
    save."""
    refuse_url(path, what)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what} {path} is a file, not a directory; move it away or choose another path")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=temp_prefix("write-probe"))
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
        raise InputError(f"cannot write to {what} {path} ({reason}); "
                         "make it writable or choose another path") from None
