"""Where an export is built and how it replaces what was at the output path.

The guarantees (README, "What we guarantee"):

* **Nothing foreign is lost.** A non-empty output that is not an earlier export of ours is refused unless
  ``overwrite`` is given; even then, and when replacing an earlier export, files we did not write are carried over
  into the new export (``overwrite`` only lets ours replace foreign files of the same path).
* **Atomic publish.** The export is built in a staging directory on the output's own filesystem and swapped in
  with one ``renameat2(RENAME_EXCHANGE)`` under a lock, so at every instant the output is the old export or the
  new one. Where the kernel or filesystem cannot exchange (or the output is a mount point, which cannot be
  renamed), entries are swapped one by one with ``qaic_config.json`` removed first and put back last: the output
  is then briefly incomplete, never a mix that loads.
* **No leftovers that look finished.** A staging directory carries a ``.qaic-partial`` marker (loading refuses
  it); staging directories of dead processes are removed by the next export to the same output.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..settings import UserError

PARTIAL_MARKER = ".qaic-partial"
CONFIG_NAME = "qaic_config.json"
# What an export written before qaic_config.json listed its files consists of.
LEGACY_ENTRIES = (
    "prefill",
    "decode",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "added_tokens.json",
    CONFIG_NAME,
    "compile.sh",
)
# Written after publishing (by the compile step) and always ours.
COMPILED_DIR = "qpc"
_INNER_STAGING = re.compile(r"\.partial-\d+")  # staging inside an output that is a mount point


def _files(root: str) -> set[str]:
    """Relative paths of the files (and symlinks) under root; directories are implied. Staging directories of
    exports built inside root (a mount point) are not part of it."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if not _INNER_STAGING.fullmatch(d)]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.add(os.path.normpath(os.path.join(rel, name)))
    return out


def export_files(staging: str) -> set[str]:
    """The files this export wrote into its staging directory: the manifest qaic_config.json records."""
    return _files(staging) - {PARTIAL_MARKER}


def check_complete(export_dir: str) -> None:
    """Refuse a staging directory: it may hold a half-written or unverified export."""
    if os.path.exists(os.path.join(export_dir, PARTIAL_MARKER)):
        raise UserError(
            f"{export_dir} is the staging directory of an unfinished export, not an export: load the "
            "output directory it was building (or export again)"
        )


def read_manifest(export_dir: str) -> set[str] | None:
    """The files an earlier export of ours wrote there, or None when export_dir holds no export of ours."""
    path = os.path.join(export_dir, CONFIG_NAME)
    if not os.path.isfile(path) or os.path.islink(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or "settings" not in meta:
        return None
    files = meta.get("files")
    if isinstance(files, list) and all(isinstance(p, str) for p in files):
        return {os.path.normpath(p) for p in files}
    present = _files(export_dir)  # an export written before the manifest existed: its fixed layout
    return {p for p in present if p.split(os.sep)[0] in LEGACY_ENTRIES}


def _ours(path: str, manifest: set[str]) -> bool:
    parts = path.split(os.sep)
    return path in manifest or (len(parts) > 2 and parts[1] == COMPILED_DIR) or path == "compile.sh"


def foreign_files(output: str) -> list[str]:
    """Files under output that no export of ours wrote (all of them when output holds no export of ours)."""
    if not os.path.isdir(output):
        return []
    manifest = read_manifest(output)
    present = _files(output)
    if manifest is None:
        return sorted(present)
    return sorted(p for p in present if not _ours(p, manifest) and os.path.basename(p) != PARTIAL_MARKER)


# -- staging ---------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Target:
    output: str  # absolute, symlinks resolved
    staging: str
    in_place: bool  # output is a mount point: staging lives inside it and entries are swapped one by one


def _resolve_output(output: str) -> str:
    path = os.path.abspath(output)
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(
            f"output {output} is a symlink to {os.readlink(path)}, which does not exist: create it or "
            "choose another output directory"
        )
    path = os.path.realpath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"output {output} is a file: give a directory")
    return path


def remove_dead_staging(parent: str, base: str, output: str) -> None:
    """Remove ``<base>.partial-<pid>`` staging directories of processes that no longer run. A process killed while
    publishing may have moved foreign files of the output into its staging directory: they go back first."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    prefix = f"{base}.partial-"
    for name in names:
        pid = name[len(prefix) :]
        if name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            staging = os.path.join(parent, name)
            _restore_foreign(staging, output)
            shutil.rmtree(staging, ignore_errors=True)


def _restore_foreign(staging: str, output: str) -> None:
    manifest = read_manifest(staging)
    if manifest is None:  # killed before its qaic_config.json existed, so before it moved anything
        return
    for rel in _files(staging):
        if _ours(rel, manifest) or os.path.basename(rel) == PARTIAL_MARKER or rel.startswith(".old-"):
            continue
        dest = os.path.join(output, rel)
        if os.path.lexists(dest):
            dest += ".recovered"
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(os.path.join(staging, rel), dest)


def prepare(output: str, overwrite: bool) -> Target:
    """Check the output before any work, clean dead staging dirs, and create this export's staging directory."""
    path = _resolve_output(output)
    foreign = foreign_files(path)
    if foreign and read_manifest(path) is None and not overwrite:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(
            f"output {output} is not empty and holds no earlier export ({shown}): choose another "
            "directory, or pass --overwrite to export into it (files of other names are kept)"
        )
    in_place = os.path.ismount(path)
    if in_place:
        staging_parent, base = path, ""
    else:
        staging_parent, base = os.path.dirname(path), os.path.basename(path)
    remove_dead_staging(staging_parent, base, path)
    staging = os.path.join(staging_parent, f"{base}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        open(os.path.join(staging, PARTIAL_MARKER), "w").close()
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"cannot write next to {output}: {e.strerror or e} ({e.filename or staging})") from e
    return Target(path, staging, in_place)


def discard(target: Target) -> None:
    shutil.rmtree(target.staging, ignore_errors=True)


# -- publishing ------------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2). False where the kernel or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


@contextmanager
def _locked(directory: str) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _carry_over(output: str, staging: str, new_files: set[str], overwrite: bool) -> None:
    """Move the files we did not write from the old output into the new export, at the same paths."""
    for rel in foreign_files(output):
        if rel in new_files:
            if overwrite:
                continue  # consented: ours replaces it
            raise UserError(
                f"{os.path.join(output, rel)} was not written by an export and the new export writes the "
                "same path: move it away, or pass --overwrite to replace it"
            )
        dest = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(os.path.join(output, rel), dest)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until publishing is over: it is a few renames, and half of it would be worse."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask, or not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def publish(target: Target, overwrite: bool = False) -> None:
    """Make the staged export the output, keeping foreign files; see the module docstring."""
    with _signals_deferred():
        _publish(target, overwrite)


def _publish(target: Target, overwrite: bool) -> None:
    output, staging = target.output, target.staging
    new_files = export_files(staging)
    lock_dir = output if target.in_place else os.path.dirname(output)
    with _locked(lock_dir):
        if os.path.isdir(output):
            _carry_over(output, staging, new_files, overwrite)
        os.remove(os.path.join(staging, PARTIAL_MARKER))
        if target.in_place:
            _swap_entries(output, staging)
        elif not os.path.exists(output):
            os.rename(staging, output)
            return
        elif not exchange(staging, output):
            _swap_entries(output, staging)
        else:  # staging now holds the old export: mark it before removing it, so a kill leaves nothing loadable
            open(os.path.join(staging, PARTIAL_MARKER), "w").close()
    shutil.rmtree(staging, ignore_errors=True)


def _swap_entries(output: str, staging: str) -> None:
    """Entry by entry: the old qaic_config.json goes first and the new one comes last; old entries end up in
    staging, which the caller removes."""
    old_config = os.path.join(output, CONFIG_NAME)
    if os.path.exists(old_config):
        os.remove(old_config)
    new = sorted(os.listdir(staging), key=lambda n: n == CONFIG_NAME)
    trash = os.path.join(staging, f".old-{os.getpid()}")
    os.makedirs(trash)
    for name in os.listdir(output):  # what is left in output is ours (foreign files were carried over)
        if name not in new and not _INNER_STAGING.fullmatch(name):
            os.rename(os.path.join(output, name), os.path.join(trash, name))
    for name in new:
        src, dst = os.path.join(staging, name), os.path.join(output, name)
        if os.path.lexists(dst) and os.path.isdir(dst) and not os.path.islink(dst):
            os.rename(dst, os.path.join(trash, name))
        os.replace(src, dst)
