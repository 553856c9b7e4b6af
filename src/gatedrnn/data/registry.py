"""The dataset registry: what each dataset's files are, where they come from, their checksums and
licenses, where they are looked for, and how they are fetched and verified.

A dataset's folder is looked for, in order, under ``--data-dir``, then ``$GATEDRNN_DATA``, then
the user cache (``$XDG_CACHE_HOME/gatedrnn`` or ``~/.cache/gatedrnn``). Downloads go to a
temporary file beside the target, are checked against their sha256, and are renamed into place,
so a killed download never leaves a file that looks complete. A dataset shipped inside the package
(JSB Chorales) is read from there when no folder holds its files, checked against the checksum
recorded beside it (:func:`embedded_copy`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gatedrnn.atomic import write_atomic

__all__ = [
    "DATASETS",
    "CorruptDataError",
    "DataFile",
    "DataMissingError",
    "DatasetInfo",
    "data_dirs",
    "fetch",
    "get_dataset",
    "locate",
    "register_dataset",
    "sha256_of",
    "verify_file",
]

logger = logging.getLogger(__name__)


class DataMissingError(FileNotFoundError):
    """A dataset's files are not in any data directory."""


class CorruptDataError(ValueError):
    """A data file's checksum differs from the registered one."""


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the dataset's folder
    sha256: str
    size: int  # bytes
    url: str | None = None  # canonical download location


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # the folder's name under a data directory
    files: tuple[DataFile, ...]
    license: str
    citation: str
    description: str
    embedded: str | None = None  # a file shipped inside the package, needing no download
    embedded_sha256: str | None = None  # that file's checksum

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    DATASETS[info.name] = info
    return info


def get_dataset(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]


def data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Where datasets are looked for, in order."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get("GATEDRNN_DATA"):
        dirs.append(Path(os.environ["GATEDRNN_DATA"]))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    dirs.append(cache / "gatedrnn")
    return dirs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected: DataFile) -> None:
    """Raise :class:`CorruptDataError` naming the file unless its size and sha256 match."""
    size = path.stat().st_size
    if size != expected.size:
        raise CorruptDataError(
            f"{path}: {size} bytes, expected {expected.size} (sha256 {expected.sha256}); the file "
            "is truncated or not the registered one: delete it and fetch it again"
        )
    digest = sha256_of(path)
    if digest != expected.sha256:
        raise CorruptDataError(
            f"{path}: sha256 {digest}, expected {expected.sha256}; delete it and fetch it again"
        )


def locate(name: str, data_dir: str | Path | None = None, *, verify: bool = True) -> Path:
    """The folder holding every file of dataset ``name``, each checked against its checksum."""
    info = get_dataset(name)
    searched = data_dirs(data_dir)
    for root in searched:
        folder = root / info.folder
        if all((folder / f.path).is_file() for f in info.files):
            if verify:
                for f in info.files:
                    verify_file(folder / f.path, f)
            return folder
    wanted = ", ".join(f.path for f in info.files)
    raise DataMissingError(
        f"dataset {name!r} is not present: put {wanted} in a folder named {info.folder!r} under "
        f"one of {', '.join(str(d) for d in searched)} (or set GATEDRNN_DATA), or run "
        f"`gatedrnn data fetch {name}`"
    )


def embedded_copy(name: str) -> io.BytesIO:
    """The bytes of dataset ``name``'s copy shipped inside the package, checked against their
    recorded sha256; :class:`DataMissingError` if it has none, :class:`CorruptDataError` naming
    the file if they differ (a damaged installation)."""
    info = get_dataset(name)
    if info.embedded is None:
        raise DataMissingError(f"dataset {name!r} has no copy inside the package")
    source = resources.files("gatedrnn.data").joinpath(info.embedded)
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.embedded_sha256:
        raise CorruptDataError(
            f"{source}: sha256 {digest}, expected {info.embedded_sha256}; the installation of "
            "gatedrnn is damaged: reinstall it"
        )
    return io.BytesIO(data)


def fetch(
    name: str,
    data_dir: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Download dataset ``name`` into the first data directory, verifying each file."""
    info = get_dataset(name)
    folder = data_dirs(data_dir)[0] / info.folder
    folder.mkdir(parents=True, exist_ok=True)
    for f in info.files:
        target = folder / f.path
        if target.is_file():
            verify_file(target, f)
            continue
        if f.url is None:
            raise DataMissingError(
                f"{f.path} of {name!r} has no download location; place it by hand"
            )

        def download(tmp: Path, f: DataFile = f) -> None:
            with urllib.request.urlopen(f.url, timeout=60) as response, open(tmp, "wb") as out:
                done = 0
                for block in iter(lambda r=response: r.read(1 << 16), b""):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(f.path, done, f.size)
            verify_file(tmp, f)  # before the rename: a bad download never takes the name

        try:
            write_atomic(target, download)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise DataMissingError(
                f"could not download {f.path} of {name!r} from {f.url} ({reason}); download it "
                f"by hand into {folder} (sha256 {f.sha256}, {f.size} bytes), then `gatedrnn "
                f"data verify {name}`"
            ) from None
        logger.info("fetched %s", target)
    return folder
