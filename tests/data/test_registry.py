"""The dataset registry: locating, verifying, fetching, and the errors that say what to do."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from gatedrnn.data import registry
from gatedrnn.data.registry import (
    CorruptDataError,
    DataFile,
    DataMissingError,
    DatasetInfo,
    fetch,
    locate,
)

CONTENT = b"piano rolls\n" * 100


@pytest.fixture
def toy_dataset(tmp_path, monkeypatch):
    source = tmp_path / "server" / "toy.bin"
    source.parent.mkdir()
    source.write_bytes(CONTENT)
    info = DatasetInfo(
        name="toy",
        folder="toy_data",
        files=(
            DataFile("toy.bin", hashlib.sha256(CONTENT).hexdigest(), len(CONTENT), source.as_uri()),
        ),
        license="CC0",
        citation="none",
        description="a test dataset",
    )
    monkeypatch.setitem(registry.DATASETS, "toy", info)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GATEDRNN_DATA", raising=False)
    return info, tmp_path


def test_missing_dataset_says_where_to_put_which_files(toy_dataset):
    _, tmp = toy_dataset
    with pytest.raises(DataMissingError, match=r"put toy\.bin in a folder named 'toy_data'.*"
                       r"gatedrnn data fetch toy"):  # fmt: skip
        locate("toy", tmp / "nowhere")


def test_fetch_verifies_and_renames_into_place(toy_dataset):
    _, tmp = toy_dataset
    folder = fetch("toy", tmp / "data")
    assert (folder / "toy.bin").read_bytes() == CONTENT
    assert [p.name for p in folder.iterdir()] == ["toy.bin"]  # no temporary file left
    assert locate("toy", tmp / "data") == folder


def test_data_dir_then_environment_then_cache(toy_dataset, monkeypatch):
    _, tmp = toy_dataset
    monkeypatch.setenv("GATEDRNN_DATA", str(tmp / "env"))
    fetch("toy")  # into the first directory: the environment's
    assert locate("toy") == tmp / "env" / "toy_data"
    assert registry.data_dirs(tmp / "explicit")[0] == tmp / "explicit"


def test_corrupt_download_leaves_nothing(toy_dataset, monkeypatch):
    info, tmp = toy_dataset
    wrong = dataclasses.replace(info.files[0], sha256="0" * 64)
    monkeypatch.setitem(registry.DATASETS, "toy", dataclasses.replace(info, files=(wrong,)))
    with pytest.raises(CorruptDataError, match="expected 0000"):
        fetch("toy", tmp / "data")
    assert not any((tmp / "data" / "toy_data").iterdir())


def test_an_unreachable_source_says_how_to_place_the_file_by_hand(toy_dataset, monkeypatch):
    info, tmp = toy_dataset
    gone = dataclasses.replace(info.files[0], url=(tmp / "server" / "gone.bin").as_uri())
    monkeypatch.setitem(registry.DATASETS, "toy", dataclasses.replace(info, files=(gone,)))
    with pytest.raises(DataMissingError, match=r"could not download toy\.bin of 'toy' from file:"
                       r".*download it by hand into .*toy_data \(sha256 [0-9a-f]{64}, 1200 bytes\)"
                       r", then `gatedrnn data verify toy`"):  # fmt: skip
        fetch("toy", tmp / "data")
    assert not any((tmp / "data" / "toy_data").iterdir())  # no temporary file left


def test_truncated_file_is_named_with_the_expected_checksum(toy_dataset):
    info, tmp = toy_dataset
    folder = tmp / "data" / "toy_data"
    folder.mkdir(parents=True)
    (folder / "toy.bin").write_bytes(CONTENT[:50])
    with pytest.raises(CorruptDataError, match=rf"toy\.bin: 50 bytes, expected {len(CONTENT)}.*"
                       rf"{info.files[0].sha256}"):  # fmt: skip
        locate("toy", tmp / "data")


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; expected one of: .*jsb"):
        registry.get_dataset("nope")
