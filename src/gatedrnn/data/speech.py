"""The Free Spoken Digit Dataset (Jackson et al.): 3,000 recordings of the digits 0–9 by six
speakers, 8 kHz mono 16-bit WAV, packed one ``tar.gz`` per speaker, and their MFCC features.

Archives are read member by member in memory, never extracted: only regular files named
``recordings/<digit>_<speaker>_<index>.wav`` are accepted, so no path in an archive can reach the
file system. MFCCs come from librosa (``pip install 'gatedrnn[speech]'``).
"""

from __future__ import annotations

import functools
import re
import tarfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gatedrnn.data.registry import DataFile, DatasetInfo, register_dataset

__all__ = ["SPEAKERS", "Recording", "mfcc", "read_fsdd"]

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
RATE = 8000
_NAME = re.compile(r"recordings/(\d)_([a-z]+)_(\d+)\.wav")

_ARCHIVES = {
    "george": ("3a01442234b0dbdeca1dda08291b4a6a2b7b1f7643fda50c266c676988a3b427", 3093009),
    "jackson": ("abf744a0a13617340e6792ccb66c331a7b5cd3975a84312c7d74d7acfff98bbd", 3687836),
    "lucas": ("504db06b58bef318d3ec80719f9208df80b6e51037d8bda44a49a5788e31552e", 3625127),
    "nicolas": ("090a14b8cac2565c3b85aec916a4aa1f25236860b788888b3fd1b73f0eb25f15", 764140),
    "theo": ("2459e7e679b706d565c4060f246f9b2233326f9b596c2f03380bbda669b1990e", 2290377),
    "yweweler": ("46edaccfd9f389032350338b5501b2174e4e9fa48c8f712bf5cbad3e243261dc", 2073927),
}

register_dataset(
    DatasetInfo(
        name="fsdd",
        folder="fsdd",
        files=tuple(
            DataFile(f"fsdd_{speaker}.tar.gz", sha, size)
            for speaker, (sha, size) in _ARCHIVES.items()
        ),
        license="CC BY-SA 4.0 (Jakobovski/free-spoken-digit-dataset)",
        citation="Jackson et al., Free Spoken Digit Dataset, v1.0.10",
        description="spoken digits, 6 speakers × 500 WAVs at 8 kHz; repo split 2,700 / 300",
    )
)


@dataclass(frozen=True)
class Recording:
    digit: int
    speaker: str
    index: int
    samples: np.ndarray  # float32 in [-1, 1)


def _read_wav(data, where: str) -> np.ndarray:
    try:
        with wave.open(data) as w:
            if (w.getnchannels(), w.getsampwidth()) != (1, 2):
                raise ValueError(
                    f"{where}: {w.getnchannels()} channels of {8 * w.getsampwidth()} bits, "
                    "expected mono 16-bit PCM"
                )
            if w.getframerate() != RATE:
                raise ValueError(f"{where}: {w.getframerate()} Hz, expected {RATE}")
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as error:
        raise ValueError(f"{where}: not a readable WAV file ({error})") from error
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if samples.size == 0:
        raise ValueError(f"{where}: no samples")
    return samples


def read_fsdd(folder: Path, speakers: tuple[str, ...] = SPEAKERS) -> list[Recording]:
    """Every recording in ``folder``'s per-speaker archives, in archive order."""
    recordings = []
    for speaker in speakers:
        path = folder / f"fsdd_{speaker}.tar.gz"
        try:
            with tarfile.open(path, "r:gz") as archive:
                for member in archive:
                    where = f"{path}:{member.name}"
                    match = _NAME.fullmatch(member.name)
                    if not member.isfile() or match is None:
                        raise ValueError(
                            f"{where}: unexpected member; expected regular files "
                            "recordings/<digit>_<speaker>_<index>.wav"
                        )
                    digit, who, index = int(match[1]), match[2], int(match[3])
                    if who != speaker:
                        raise ValueError(f"{where}: a recording of {who!r} in {speaker}'s archive")
                    samples = _read_wav(archive.extractfile(member), where)
                    recordings.append(Recording(digit, who, index, samples))
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ValueError(f"{path}: not a readable tar.gz archive ({error})") from error
    return recordings


@functools.cache
def _librosa():
    try:
        import librosa
    except ImportError as error:
        raise ImportError(
            "the fsdd task computes MFCCs with librosa: pip install 'gatedrnn[speech]'"
        ) from error
    return librosa


def mfcc(samples: np.ndarray, n_mfcc: int = 13) -> np.ndarray:
    """(frames, n_mfcc) MFCCs: 32 ms windows every 10 ms, 40 mel bands (librosa)."""
    librosa = _librosa()
    features = librosa.feature.mfcc(
        y=samples, sr=RATE, n_mfcc=n_mfcc, n_fft=256, hop_length=80, n_mels=40
    )
    return features.T.astype(np.float32)
