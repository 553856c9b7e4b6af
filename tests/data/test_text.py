"""Text readers on small files in the real formats (gzip'd token lines, stsa label lines), their
error paths, and the real PTB / WikiText-2 / SST-2 files against their SOURCE.md figures."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from gatedrnn.data.registry import DataMissingError, locate
from gatedrnn.data.text import EOS, Vocabulary, read_labelled_lines, read_token_lines

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def test_token_lines_get_one_eos_each_blank_lines_included(tmp_path):
    path = _gz(tmp_path / "t.txt.gz", " the cat <unk>\n \n a N dog\n")
    assert read_token_lines(path) == ["the", "cat", "<unk>", EOS, EOS, "a", "N", "dog", EOS]


def test_truncated_gzip_is_named(tmp_path):
    path = _gz(tmp_path / "cut.txt.gz", "word " * 5000)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cut\.txt\.gz: not a readable text file"):
        read_token_lines(path)


def test_empty_text_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"e\.txt: empty"):
        read_token_lines(_write(tmp_path / "e.txt", ""))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_labelled_lines(tmp_path):
    path = _gz(tmp_path / "s.gz", "1 a fine film\n0 dull -lrb- very -rrb-\n")
    assert read_labelled_lines(path, {0, 1}) == [
        (1, ["a", "fine", "film"]),
        (0, ["dull", "-lrb-", "very", "-rrb-"]),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 good\npositive bad\n", r"line 2: expected '<integer label> <text>'"),
        ("1 good\n7 odd\n", r"line 2: label 7 not in \[0, 1\]"),
        ("1\n", r"line 1: label 1 with no text"),
        ("\n\n", "no examples"),
    ],
)
def test_malformed_labelled_lines_name_the_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_labelled_lines(_write(tmp_path / "bad.txt", text), {0, 1})


def test_vocabulary_order_and_unknown_words():
    vocab = Vocabulary(["b", "a", "b"], extra=(EOS,))
    assert vocab.encode(["a", EOS, "b"]) == [2, 0, 1]
    with pytest.raises(ValueError, match=r"valid\.txt: word 'zebra' is not in the training"):
        vocab.encode(["zebra"], where="valid.txt")
    assert Vocabulary(["<unk>", "x"]).encode(["zebra"], unknown="<unk>") == [0]


# SOURCE.md: tokens including one <eos> per line; vocabulary sizes
REAL = {
    "ptb": ([929_589, 73_760, 82_430], 10_000),
    "wikitext2": ([2_088_628, 217_646, 245_569], 33_278),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_language_modelling_data(name):
    from gatedrnn.tasks import build_task

    try:
        locate(name, SHARED, verify=False)
    except DataMissingError:
        pytest.skip(f"../shared/data holds no {name}")
    task = build_task(name, data_dir=SHARED)  # checksums verified
    tokens, vocabulary = REAL[name]
    assert [len(task.splits[s]) for s in ("train", "valid", "test")] == tokens
    assert len(task.vocabulary) == vocabulary
