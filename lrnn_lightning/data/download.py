"""Download a corpus archive (resumable, checksummed) and extract it safely into a folder."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from lrnn_lightning.errors import CorpusError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


class _Progress:
    """A rich bar in a terminal, a log line every 10% elsewhere."""

    def __init__(self, name: str, total: int, done: int):
        self.name, self.total, self.done, self.next_pct = name, total, done, 10
        self.bar = None
        if sys.stderr.isatty() and total:
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            self.bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True)
            self.task = self.bar.add_task(name, total=total, completed=done)
            self.bar.start()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.total and 100 * self.done >= self.next_pct * self.total:
            log.info("%s: %d%% of %.1f MB", self.name, 100 * self.done // self.total, self.total / 1e6)
            self.next_pct = 100 * self.done // self.total + 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def fetch(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; resume a previous partial download when
    the server allows it (HTTP Range), restart otherwise; rename only once the checksum matches."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "lrnn-lightning"}
    if have:
        headers["Range"] = f"bytes={have}-"
    log.info("downloading %s -> %s%s", url, dest, f" (resuming at {have} bytes)" if have else "")
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            resumed = have and r.status == 206
            if not resumed:
                have = 0
            total = have + int(r.headers.get("Content-Length") or 0)
            progress = _Progress(dest.name, total, have)
            try:
                with open(part, "ab" if resumed else "wb") as f:
                    while chunk := r.read(CHUNK):
                        f.write(chunk)
                        progress.update(len(chunk))
            finally:
                progress.close()
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part is whole, the checksum decides
            pass
        else:
            raise CorpusError(
                f"download of {url} failed: HTTP {e.code} {e.reason}.\n"
                f"  to fix: check the address, or download the file yourself into {dest.parent} as {dest.name}"
            ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        kept = part.is_file() and part.stat().st_size > 0
        again = f"the partial file {part} is kept: run again to resume" if kept else "run again"
        raise CorpusError(
            f"download of {url} failed ({getattr(e, 'reason', e)}).\n"
            f"  to fix: {again}, or download the file yourself into {dest.parent} as {dest.name}. "
            "Offline? Set data.download=false and put the corpus in data.root."
        ) from None
    if sha256:
        got = sha256_of(part)
        if got != sha256.lower():
            part.unlink(missing_ok=True)
            raise CorpusError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}. The download was deleted.\n"
                "  to fix: run again (a transfer error); if it persists the file changed upstream: download it "
                "yourself, check it, and extract it into data.root."
            )
    os.replace(part, dest)
    log.info("downloaded %s (%.1f MB in %.0f s)", dest.name, dest.stat().st_size / 1e6, time.perf_counter() - t0)
    return dest


def _check_member(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise CorpusError(
            f"archive {archive} has a member '{name}' that would be written outside the target folder; "
            "refusing to extract it. Delete the archive and get the corpus from its official source."
        )
    return p


def extract(archive: Path, target: Path, fmt: str, members: str | None = None) -> list[str]:
    """Extract ``archive`` (``tar.gz``, ``tar.bz2``, ``zip``) into ``target``.

    Every member is checked first (no absolute path, no ``..``, no link out of the folder, no
    device); the archive is unpacked into a hidden temporary folder inside ``target`` and its
    top-level entries are renamed into place only when all of it succeeded. ``members`` keeps only
    the members whose path starts with that prefix. Returns the top-level names placed in ``target``.
    """
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if _check_member(n, archive) and (not members or n.startswith(members))]
                zf.extractall(tmp, members=names)
        elif fmt in ("tar.gz", "tgz", "tar.bz2", "tar.xz", "tar"):
            with tarfile.open(archive) as tf:
                chosen = []
                for m in tf.getmembers():
                    _check_member(m.name, archive)
                    if m.islnk() or m.issym():
                        link = PurePosixPath(m.name).parent / m.linkname if m.issym() else PurePosixPath(m.linkname)
                        _check_member(os.path.normpath(str(link)), archive)
                    if m.isdev():
                        raise CorpusError(f"archive {archive} has a device member '{m.name}'; refusing to extract it")
                    if not members or m.name.startswith(members):
                        chosen.append(m)
                tf.extractall(tmp, members=chosen, filter="data")
        else:
            raise CorpusError(f"unknown archive format '{fmt}' for {archive}")
        placed = []
        for entry in sorted(tmp.iterdir()):
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(entry, dest)
            placed.append(entry.name)
        return placed
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise CorpusError(f"archive {archive} is damaged ({e}); delete it and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
