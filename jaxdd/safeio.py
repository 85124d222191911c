"""Every file jaxdd writes goes through here: atomic writes, fingerprints, output-path
checks and the run-directory lock.

Rules (README "Files jaxdd writes"):
- a write goes to a temporary sibling that is renamed into place, so a reader never sees
  half a file and a crash never corrupts an existing one;
- jaxdd never deletes or renames anything it did not create: an existing path that is not
  a jaxdd run directory or artefact is an error, never a target;
- a run directory is locked (`fcntl.flock` on OUT/.jaxdd.lock) while a process uses it; the
  kernel drops the lock when that process dies, so a killed run's lock is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Callable

import numpy as np


class OutputError(ValueError):
    """An output path jaxdd must not (or cannot) write; the message says what to change."""


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (config parts that determine a result)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: str, write: Callable[[str], None], suffix: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    except OSError as e:
        raise OutputError(os_error_message(path, e)) from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(os_error_message(path, e)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str, obj: Any, indent: int = 2) -> None:
    """JSON to `path`, atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, default=str)
    _write_atomic(path, write, ".json")


def write_text(path: str, text: str) -> None:
    """Text to `path`, atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _write_atomic(path, write, ".txt")


def write_bytes(path: str, data: bytes) -> None:
    """Bytes (a PNG) to `path`, atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    _write_atomic(path, write, os.path.splitext(path)[1] or ".bin")


def savez(path: str, **arrays: np.ndarray) -> None:
    """`np.savez` to `path`, atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    _write_atomic(path, write, ".npz")


def write_dir(out_dir: str, fill: Callable[[str], None], *, replace: bool, prefix: str) -> None:
    """Build a directory atomically: `fill(tmp)` writes into a temporary sibling that is then
    renamed to `out_dir`. `replace`: out_dir is a directory jaxdd wrote (the caller checked)
    and is moved aside, replaced and only then removed; otherwise out_dir is absent or an
    empty directory. A failure leaves out_dir as it was and no temporary behind."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    makedirs(parent)
    tmp = None
    try:
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{prefix}-")
        fill(tmp)
        if replace and os.path.exists(out_dir):  # old -> aside, new -> in, old removed
            old = tempfile.mkdtemp(dir=parent, prefix=f".old-{prefix}-")
            os.rmdir(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            if os.path.isdir(out_dir):  # an empty directory (checked by the caller)
                os.rmdir(out_dir)
            os.replace(tmp, out_dir)
    except OSError as e:
        raise OutputError(os_error_message(out_dir, e)) from None
    finally:
        if tmp and os.path.exists(tmp):
            shutil.rmtree(tmp)


def read_versioned_json(path: str, fmt: str, version: int, error: type[Exception],
                        missing: str) -> dict[str, Any]:
    """A JSON file jaxdd wrote with `format` = fmt (artefact meta, buffer and teacher
    manifests); errors of type `error`: `missing` if absent, then corrupt, foreign, newer."""
    if not os.path.exists(path):
        raise error(missing)
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise error(f"{path} is corrupt ({e}); re-create it") from None
    if not isinstance(m, dict) or m.get("format") != fmt:
        found = m.get("format") if isinstance(m, dict) else None
        raise error(f"{path} is not a {fmt} file (format {found!r})")
    if m.get("format_version", 0) > version:
        raise error(f"{path} has format {m['format_version']}, newer than this jaxdd "
                    f"({version}); upgrade jaxdd")
    return m


def makedirs(path: str) -> None:
    """`os.makedirs(exist_ok=True)` with a clear error for a file in the way or no permission."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path} is an existing file, not a directory; choose another path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(os_error_message(path, e)) from None


def os_error_message(path: str, e: OSError) -> str:
    reason = os.strerror(e.errno) if e.errno else str(e)
    hint = ("make it writable or choose another output path"
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "check the path")
    return f"cannot write {path} ({reason}); {hint}"


def is_run_dir(path: str) -> bool:
    """A directory jaxdd started a run in (it holds run.json, or run/run.json)."""
    return (os.path.isfile(os.path.join(path, "run.json"))
            or os.path.isfile(os.path.join(path, "run", "run.json")))


def check_run_out(path: str, flag: str = "--out") -> None:
    """`--out` (or `flag`) of a run: absent, empty, or a jaxdd run directory; anything else is
    refused."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise OutputError(f"{flag} {path} is an existing file; choose a new directory path")
    entries = [e for e in os.listdir(path) if e != LOCK_NAME]
    if entries and not is_run_dir(path):
        raise OutputError(f"{flag} {path} exists and is not a jaxdd run directory ({len(entries)} "
                          f"entries, e.g. {sorted(entries)[0]!r}); choose a new or empty directory")


LOCK_NAME = ".jaxdd.lock"


def _remove_if_unused(path: str) -> None:
    """Remove a run directory this process created if it holds nothing but the lock file and
    empty directories (a run that failed before writing anything leaves no trace)."""
    walk = list(os.walk(path, topdown=False))
    if any(f for d, _, files in walk for f in files if (d, f) != (path, LOCK_NAME)):
        return
    os.unlink(os.path.join(path, LOCK_NAME))
    for d, _, _ in walk:
        os.rmdir(d)


class RunLock:
    """Exclusive lock of a run directory for the life of this process (a context manager).

    A second process gets an OutputError naming the holder's pid and host. A directory the
    lock created is removed again if the run failed before writing anything. The lock is an
    `flock` on OUT/.jaxdd.lock: the kernel releases it when its process dies (SIGKILL
    included), so a stale lock file is simply taken over.
    """

    def __init__(self, path: str, flag: str = "--out"):
        self.path = path
        self.flag = flag   # the option that named the directory, for the error message
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.created = not os.path.exists(self.path)
        makedirs(self.path)
        lock_path = os.path.join(self.path, LOCK_NAME)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(os_error_message(lock_path, e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"{self.path} is in use by {holder}; wait for it to finish or "
                              f"choose another {self.flag}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"jaxdd pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an idle run directory holds an empty lock file
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            if self.created:
                _remove_if_unused(self.path)


def claim_run(run_dir: str, config: dict, flag: str = "--out") -> None:
    """Write RUN_DIR/run.json (the config and its fingerprint), or refuse a directory that
    was started with a different config, naming the fields that changed (and `flag`, the
    option that chose the directory)."""
    makedirs(run_dir)
    path = os.path.join(run_dir, "run.json")
    fp = fingerprint(config)
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            raise OutputError(f"{path} is unreadable; choose another {flag}") from None
        if old.get("fingerprint") != fp:
            stored = old.get("config", {})
            new = json.loads(json.dumps(config, default=str))
            changed = sorted(k for k in set(stored) | set(new) if stored.get(k) != new.get(k))
            raise OutputError(f"{run_dir} holds a run with a different config (changed: "
                              f"{', '.join(changed) or 'unknown'}); use another {flag} or the "
                              f"original config")
        return
    write_json(path, {"fingerprint": fp, "config": config})
