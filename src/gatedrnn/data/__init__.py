"""Datasets: a registry of sources, checksums and licenses (:mod:`.registry`), and loaders.
JSB Chorales is embedded in the package, so the default study needs no download."""

from gatedrnn.data.music import piano_rolls
from gatedrnn.data.registry import (
    DATASETS,
    CorruptDataError,
    DataFile,
    DataMissingError,
    DatasetInfo,
    data_dirs,
    embedded_copy,
    fetch,
    get_dataset,
    locate,
    register_dataset,
    verify_file,
)

__all__ = [
    "DATASETS",
    "CorruptDataError",
    "DataFile",
    "DataMissingError",
    "DatasetInfo",
    "data_dirs",
    "embedded_copy",
    "fetch",
    "get_dataset",
    "locate",
    "piano_rolls",
    "register_dataset",
    "verify_file",
]
