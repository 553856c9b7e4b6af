"""FSDD: per-speaker tar.gz archives of 8 kHz WAVs written here in the real layout, the archive
path checks and WAV format checks, MFCC shapes, the two splits, and the real files' counts."""

from __future__ import annotations

import io
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest

from gatedrnn.data.registry import DataMissingError, locate
from gatedrnn.data.speech import SPEAKERS, read_fsdd

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def wav_bytes(samples: np.ndarray, rate: int = 8000, width: int = 2, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def write_archive(folder: Path, speaker: str, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fsdd_{speaker}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def tone(digit: int, n: int = 2400) -> np.ndarray:
    t = np.arange(n) / 8000
    return (0.5 * np.sin(2 * np.pi * (200 + 100 * digit) * t)).astype(np.float32)


def write_fsdd(folder: Path, indices=range(12)) -> Path:
    for speaker in SPEAKERS:
        members = {
            f"recordings/{d}_{speaker}_{i}.wav": wav_bytes(tone(d))
            for d in range(10)
            for i in indices
        }
        write_archive(folder, speaker, members)
    return folder


def test_archives_read_in_memory(tmp_path):
    recordings = read_fsdd(write_fsdd(tmp_path / "fsdd", indices=range(2)))
    assert len(recordings) == 6 * 10 * 2
    first = recordings[0]
    assert (first.digit, first.speaker, first.index) == (0, "george", 0)
    assert first.samples.dtype == np.float32 and abs(first.samples).max() <= 1


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("../../etc/evil.wav", b"x", "unexpected member"),
        ("recordings/notes.txt", b"x", "unexpected member"),
        ("recordings/3_lucas_1.wav", None, "a recording of 'lucas' in george's archive"),
        ("recordings/3_george_1.wav", b"RIFF....", "not a readable WAV file"),
        ("recordings/3_george_2.wav", "stereo", "2 channels of 16 bits, expected mono"),
        ("recordings/3_george_3.wav", "rate", "16000 Hz, expected 8000"),
    ],
)
def test_bad_archive_members_are_named(tmp_path, name, data, message):
    if data is None:
        data = wav_bytes(tone(3))
    elif data == "stereo":
        data = wav_bytes(np.repeat(tone(3), 2), channels=2)
    elif data == "rate":
        data = wav_bytes(tone(3), rate=16000)
    write_archive(tmp_path, "george", {name: data})
    with pytest.raises(ValueError, match=message):
        read_fsdd(tmp_path, speakers=("george",))


def test_truncated_archive(tmp_path):
    path = write_archive(tmp_path, "george", {"recordings/1_george_0.wav": wav_bytes(tone(1))})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"fsdd_george\.tar\.gz: not a readable tar\.gz"):
        read_fsdd(tmp_path, speakers=("george",))


def test_fsdd_task_splits_and_features(tmp_path, monkeypatch):
    pytest.importorskip("librosa")
    import gatedrnn.tasks.classify as classify
    from gatedrnn.tasks import build_task

    folder = write_fsdd(tmp_path / "fsdd")
    monkeypatch.setattr(classify, "locate", lambda name, data_dir: folder)
    task = build_task("fsdd")
    sizes = [len(task.data[s]) for s in ("train", "valid", "test")]
    assert sizes == [6 * 10 * 2, 6 * 10 * 5, 6 * 10 * 5]  # indices 10–11 / 5–9 / 0–4
    x, y = task.data["train"][0]
    assert x.shape == (31, 13) and y == 0  # 2,400 samples every 80: 31 frames
    held_out = build_task("fsdd", split="speaker", valid_speaker="lucas", test_speaker="theo")
    assert [len(held_out.data[s]) for s in ("train", "valid", "test")] == [480, 120, 120]
    with pytest.raises(ValueError, match="test_speaker 'bob' is not one of george"):
        build_task("fsdd", test_speaker="bob")
    with pytest.raises(ValueError, match="split must be 'repo' or 'speaker', got 'random'"):
        build_task("fsdd", split="random")


@pytest.mark.realdata
def test_real_fsdd_counts():
    try:
        locate("fsdd", SHARED, verify=False)
    except DataMissingError:
        pytest.skip("../shared/data holds no fsdd")
    recordings = read_fsdd(locate("fsdd", SHARED))  # checksums verified
    assert len(recordings) == 3000
    assert sum(r.index < 5 for r in recordings) == 300  # the repo's test split
    assert {r.speaker for r in recordings} == set(SPEAKERS)
    assert all(sum(r.digit == d for r in recordings) == 300 for d in range(10))
