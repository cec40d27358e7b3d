"""The one on-disk cache: entries addressed by what made them, built once, verified every time they are opened.

Every cache saeval keeps (tokens, activations, LLM replies, ...) goes through this module.

Keys
    ``CacheKey(kind, parts)``: ``kind`` names a folder under ``cache_dir()`` (``"tokens"``, ``"activations"``);
    ``parts`` is a JSON-able dict of everything that determines the content: content digests
    (``saeval.hashing.file_digest``/``tree_digest``, ``host.fingerprint()``), configs, a format number, never a
    bare path or name (an edited file at the same path must give a new key). ``key.path`` is
    ``cache_dir()/<kind>/<json_digest(parts)>``.

Folder entries (several files, e.g. safetensors shards)
    ``get_or_build(key, build, verify="full") -> Path``: the entry's folder. If it exists and verifies it is
    returned; otherwise ``build(tmp)`` writes the files into a private temp folder beside it (never the final
    name, never shared with another writer), ``manifest.json`` (each file's size and blake2b) is added, modes
    are set (files 0644, folders 0755) and the folder is renamed into place in one step. ``key`` may also be a
    plain Path: a folder the caller chose (a test's ``tmp_path``). The name ``manifest.json`` is reserved.
    ``lookup(key, verify="full") -> Path | None``: the verified entry, or None (a damaged one is removed).
    ``verify="size"`` checks only that each file is present with its size (no reading): for entries so large
    that hashing them on each open costs more than it saves; ``benchmarks/bench_cache.py`` measures the cost.

Housekeeping
    ``clean_stale(folder, max_age=STALE_AFTER, prefix=".")`` removes abandoned temp folders/files
    (``<prefix>*.tmp``) in a kind's folder (``get_or_build`` calls it before each build, ``write_record`` once
    per process); ``checksum(path)`` is the streaming blake2b the manifests hold.

Small values (one JSON document each, e.g. an LLM reply)
    ``read_record(key) -> Any | None`` and ``write_record(key, value)``: ``cache_dir()/<kind>/<digest>.json``,
    written atomically (saeval.io) with a checksum of the value; no lock (two writers write the same bytes).

Guarantees
    * Damage (a missing, truncated or altered file, an unreadable manifest) is reported in one line naming the
      file (``cache: <path> is damaged (size 12 != 4096); rebuilding``), the entry is removed and rebuilt.
    * An advisory lock (``fcntl.flock`` on ``<entry>.lock``) makes a second process wait for the first one's
      build and reuse it rather than compute the same entry again. Reads of a sound entry take no lock: entries
      never change once in place.
    * A build that fails or is interrupted leaves no entry and no temp folder; temp folders of writers that
      were killed (pid gone, same host) or are older than ``STALE_AFTER`` are removed when an entry is built.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from saeval.assets import cache_dir
from saeval.hashing import json_digest, text_digest
from saeval.io import FILE_MODE, strict_json, write_json_atomic

DIR_MODE = 0o755
MANIFEST = "manifest.json"
FORMAT = 1
STALE_AFTER = 6 * 3600.0  # seconds without a write after which a temp folder is abandoned whoever wrote it
Verify = Literal["full", "size"]

# Temp names carry the writer's host and pid, so a killed writer's leftovers are recognised at once (the pid is
# only checked on the same host: a cache on a shared filesystem is written from several machines).
_HOST = text_digest(socket.gethostname())[:8]
_TEMP = re.compile(r"\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[^.]*\.tmp$")
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


@dataclass(frozen=True)
class CacheKey:
    kind: str
    parts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not _KIND.fullmatch(self.kind):
            raise ValueError(f"cache kind {self.kind!r} must be a plain folder name")

    @property
    def digest(self) -> str:
        return json_digest(self.parts)

    @property
    def path(self) -> Path:
        return cache_dir() / self.kind / self.digest


def _say(text: str) -> None:
    _console.print(text)


def _entry_path(key: CacheKey | Path) -> Path:
    return key.path if isinstance(key, CacheKey) else Path(key)


def checksum(path: Path) -> str:
    """Streaming blake2b of a file's bytes (not memoised: a verification must read what is on disk now)."""
    h = hashlib.blake2b(digest_size=16)
    buffer = bytearray(4 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- verification
_ABSENT: tuple[Path, str] = (Path(), "absent")  # compared by identity


def _problem(entry: Path, verify: Verify) -> tuple[Path, str] | None:
    """None when ``entry`` is sound, ``_ABSENT`` when there is none, else (the bad file, why)."""
    if not entry.exists() and not entry.is_symlink():
        return _ABSENT
    if entry.is_symlink() or not entry.is_dir():
        return entry, "not a folder"
    manifest = entry / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
        if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("blake2b"), str)
            and not Path(k).is_absolute() and ".." not in Path(k).parts for k, v in files.items()
        ):
            raise ValueError("bad file table")
    except FileNotFoundError:
        return manifest, "missing"
    except (OSError, ValueError, KeyError, TypeError) as err:  # garbage, truncated JSON, wrong shape
        return manifest, f"unreadable: {type(err).__name__}"
    for name, want in files.items():  # sizes first: a truncated or missing file is found without reading
        path = entry / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return path, "missing"
        if size != want["size"]:
            return path, f"size {size} != {want['size']}"
    if verify == "full":
        sums = _checksums([entry / name for name in files])
        for (name, want), got in zip(files.items(), sums, strict=True):
            if got != want["blake2b"]:
                return entry / name, "checksum mismatch"
    return None


def _checksums(paths: list[Path]) -> list[str]:
    # hashlib releases the GIL on large buffers: shards hash in parallel, one per core (bench_cache.py).
    workers = min(len(paths), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [checksum(p) for p in paths]
    with ThreadPoolExecutor(workers, thread_name_prefix="saeval-cache") as pool:
        return list(pool.map(checksum, paths))


def _discard(entry: Path) -> None:
    """Remove an entry: first renamed aside in one step, so no reader sees it half deleted."""
    if entry.is_dir() and not entry.is_symlink():
        trash = _temp_dir(entry)
        try:
            os.rename(entry, trash)  # onto an empty folder: allowed, and atomic
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _check_or_discard(entry: Path, verify: Verify, action: str) -> bool:
    """True when ``entry`` is sound; a damaged one is reported in one line and removed."""
    problem = _problem(entry, verify)
    if problem is None:
        return True
    if problem is not _ABSENT:
        bad, why = problem
        _say(f"cache: {bad} is damaged ({why}); {action}")
        _discard(entry)
    return False


def lookup(key: CacheKey | Path, verify: Verify = "full") -> Path | None:
    """The entry's folder when it exists and verifies, else None (a damaged entry is reported and removed)."""
    entry = _entry_path(key)
    problem = _problem(entry, verify)
    if problem is None or problem is _ABSENT:
        return entry if problem is None else None
    with _locked(entry):  # damage is only acted on under the lock: a writer may be replacing the entry
        return entry if _check_or_discard(entry, verify, "removing it") else None


# --------------------------------------------------------------------------------------------------- building
def _temp_dir(entry: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.{_HOST}.{os.getpid()}.", suffix=".tmp"))


@contextmanager
def _locked(entry: Path) -> Iterator[None]:
    _make_dir(entry.parent)
    # O_RDONLY is enough for flock, so a lock file another user created (0644) can still be opened.
    fd = os.open(entry.with_name(entry.name + ".lock"), os.O_RDONLY | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not os.environ.get("SAEVAL_QUIET"):
                _say(f"cache: waiting for another process building {entry}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _make_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(path, DIR_MODE)  # whatever the umask: the cache is readable by the machine's other users
        except PermissionError:
            pass


def _manifest(folder: Path, key: CacheKey | Path) -> dict[str, Any]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    names = [path.relative_to(folder).as_posix() for path in paths]
    if MANIFEST in names:
        raise RuntimeError(f"a cache builder wrote {MANIFEST}, a name the cache reserves")
    files = {name: {"size": path.stat().st_size, "blake2b": digest}
             for name, path, digest in zip(names, paths, _checksums(paths), strict=True)}
    parts = json.loads(json.dumps(strict_json(key.parts), default=str)) if isinstance(key, CacheKey) else None
    return {"format": FORMAT, "kind": getattr(key, "kind", None), "parts": parts, "built": time.time(),
            "files": files}


def _set_modes(folder: Path) -> None:
    for path in folder.rglob("*"):
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)
    os.chmod(folder, DIR_MODE)  # mkdtemp makes it 0700


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _last_write(path: Path) -> float:
    try:
        times = [path.lstat().st_mtime]
        if path.is_dir() and not path.is_symlink():
            times += [p.lstat().st_mtime for p in path.iterdir()]
        return max(times)
    except FileNotFoundError:
        return time.time()  # removed meanwhile: nothing to do


def clean_stale(folder: Path, max_age: float = STALE_AFTER, prefix: str = ".") -> list[Path]:
    """Remove temp folders/files (``<prefix>*.tmp``) in ``folder`` whose writer is gone or ``max_age`` old."""
    removed: list[Path] = []
    now = time.time()
    try:
        names = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except FileNotFoundError:
        return removed
    for path in names:
        m = _TEMP.search(path.name)
        dead = m is not None and m["host"] == _HOST and not _alive(int(m["pid"]))
        if dead or now - _last_write(path) > max_age:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _publish(tmp: Path, entry: Path, verify: Verify) -> None:
    try:
        os.rename(tmp, entry)
        return
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
    # Another writer that could not take the lock (a filesystem without flock) finished first: keep theirs.
    if _check_or_discard(entry, verify, "replacing it"):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(tmp, entry)


def get_or_build(key: CacheKey | Path, build: Callable[[Path], None], verify: Verify = "full") -> Path:
    """The entry's folder, built by ``build(folder)`` (which writes its files there) when absent or damaged."""
    entry = _entry_path(key)
    if _problem(entry, verify) is None:  # the common case: no lock, entries never change once in place
        return entry
    with _locked(entry):
        if _check_or_discard(entry, verify, "rebuilding"):  # built by another process while this one waited
            return entry
        # A kind's folder holds only cache files; in a folder the caller chose, only this entry's temps are ours.
        clean_stale(entry.parent, prefix="." if isinstance(key, CacheKey) else f".{entry.name}.")
        tmp = _temp_dir(entry)
        try:
            build(tmp)
            manifest = _manifest(tmp, key)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False, default=str))
            _set_modes(tmp)
            _publish(tmp, entry, verify)
        except BaseException:  # a failed or interrupted build leaves nothing behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


# ------------------------------------------------------------------------------------------------ small values
def _record_path(key: CacheKey) -> Path:
    return key.path.with_suffix(".json")


def _value_sum(value: Any) -> str:
    return text_digest(json.dumps(strict_json(value), sort_keys=True, separators=(",", ":")))


def read_record(key: CacheKey) -> Any | None:
    """The stored value, or None when absent; a damaged record is reported in one line and removed."""
    path = _record_path(key)
    try:
        record = json.loads(path.read_text())
        if record["digest"] == key.digest and record["checksum"] == _value_sum(record["value"]):
            return record["value"]
        why = "checksum mismatch"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        why = f"unreadable: {type(err).__name__}"
    _say(f"cache: {path} is damaged ({why}); removing it")
    try:
        path.unlink(missing_ok=True)
    except OSError:  # another user's file: it is only ignored
        pass
    return None


_CLEANED: set[Path] = set()


def write_record(key: CacheKey, value: Any) -> Path:
    """Store a JSON value under ``key`` atomically (the last writer wins; equal keys mean equal values)."""
    path = _record_path(key)
    if path.parent not in _CLEANED:  # a folder of many small records: look for leftovers once per process
        _make_dir(path.parent)
        clean_stale(path.parent)
        _CLEANED.add(path.parent)
    parts = json.loads(json.dumps(key.parts, default=str))  # as json_digest saw them
    payload = {"format": FORMAT, "digest": key.digest, "kind": key.kind, "parts": parts, "value": value,
               "checksum": _value_sum(value)}
    return write_json_atomic(path, payload)
