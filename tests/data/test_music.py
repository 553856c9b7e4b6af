"""Piano-roll loading: the embedded JSB archive, .mat files in the real format, malformed ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from gatedrnn.data.music import load_mat_rolls, piano_rolls

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_embedded_jsb_has_the_published_split():
    rolls = piano_rolls("jsb", data_dir="/nonexistent")
    assert [len(rolls[s]) for s in ("train", "valid", "test")] == [229, 76, 77]
    assert [sum(len(r) for r in rolls[s]) for s in ("train", "valid", "test")] == [
        13807, 4602, 4725,
    ]  # fmt: skip
    assert all(r.shape[1] == 88 and r.dtype == np.float32 for r in rolls["train"])
    assert max(r.sum(1).max() for r in rolls["train"]) == 4  # four voices


@pytest.mark.realdata
def test_embedded_jsb_equals_the_registered_mat_file():
    if not (SHARED / "jsb_chorales" / "JSB_Chorales.mat").is_file():
        pytest.skip("../shared/data/jsb_chorales is absent")
    embedded = piano_rolls("jsb", data_dir="/nonexistent")
    real = piano_rolls("jsb", data_dir=SHARED)  # verified against its sha256
    for split in embedded:
        assert all(np.array_equal(a, b) for a, b in zip(embedded[split], real[split], strict=True))


def _cells(*rolls):
    cell = np.empty((1, len(rolls)), dtype=object)
    for i, roll in enumerate(rolls):
        cell[0, i] = roll
    return cell


def _write(path, **splits):
    scipy.io.savemat(path, {f"{k}data": v for k, v in splits.items()})
    return path


def test_mat_file_in_the_real_format(tmp_path):
    roll = (np.random.default_rng(0).random((7, 88)) < 0.05).astype(np.uint8)
    path = _write(tmp_path / "m.mat", train=_cells(roll, roll[:3]), valid=_cells(roll),
                  test=_cells(roll[:2]))  # fmt: skip
    rolls = load_mat_rolls(path)
    assert [len(rolls[s]) for s in ("train", "valid", "test")] == [2, 1, 1]
    assert np.array_equal(rolls["train"][1], roll[:3])


@pytest.mark.parametrize(
    "splits, message",
    [
        ({"train": None}, "missing the 'validdata' cell"),
        ({"bad_width": None}, r"traindata\[0\] has shape \(5, 80\), expected \(T >= 1, 88\)"),
        ({"bad_values": None}, r"traindata\[0\] holds values other than 0 and 1"),
    ],
)
def test_malformed_mat_files_are_named(tmp_path, splits, message):
    good = _cells(np.zeros((5, 88), dtype=np.uint8))
    if "bad_width" in splits:
        data = {"train": _cells(np.zeros((5, 80), dtype=np.uint8)), "valid": good, "test": good}
    elif "bad_values" in splits:
        data = {"train": _cells(np.full((5, 88), 2, dtype=np.uint8)), "valid": good, "test": good}
    else:
        data = {"train": good}
    path = _write(tmp_path / "bad.mat", **data)
    with pytest.raises(ValueError, match=f"bad.mat: {message}"):
        load_mat_rolls(path)


def test_truncated_mat_file(tmp_path):
    path = tmp_path / "cut.mat"
    _write(path, train=_cells(np.zeros((5, 88), dtype=np.uint8)))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"cut\.mat: not a readable MATLAB file"):
        load_mat_rolls(path)


# split sizes and time steps from each dataset's SOURCE.md
PUBLISHED = {
    "jsb": ([229, 76, 77], None),
    "nottingham": ([694, 173, 170], [176561, 45513, 44463]),
    "musedata": ([524, 135, 124], [245202, 82755, 64339]),
    "pianomidi": ([87, 12, 25], [75911, 8540, 19036]),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_music_datasets_have_the_published_splits(name):
    from gatedrnn.data.registry import DataMissingError, locate

    try:
        locate(name, SHARED, verify=False)
    except DataMissingError:
        pytest.skip(f"../shared/data holds no {name}")
    rolls = piano_rolls(name, data_dir=SHARED)  # checksums verified
    counts, steps = PUBLISHED[name]
    assert [len(rolls[s]) for s in ("train", "valid", "test")] == counts
    if steps:
        assert [sum(len(r) for r in rolls[s]) for s in ("train", "valid", "test")] == steps
