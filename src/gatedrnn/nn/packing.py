"""Packing with checked lengths.

:func:`pack_padded_sequence` is torch's, with the length checks torch leaves out (a length past
the padded size is packed from whatever memory follows, without an error in torch 2.13). The
other helpers are torch's own, re-exported so one import serves.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils import rnn as torch_rnn
from torch.nn.utils.rnn import PackedSequence, pack_sequence, pad_packed_sequence, pad_sequence

__all__ = [
    "PackedSequence",
    "pack_padded_sequence",
    "pack_sequence",
    "pad_packed_sequence",
    "pad_sequence",
]


def pack_padded_sequence(
    input: Tensor,
    lengths: Tensor | list[int],
    batch_first: bool = False,
    enforce_sorted: bool = True,
) -> PackedSequence:
    """:func:`torch.nn.utils.rnn.pack_padded_sequence`, after checking ``lengths``.

    ``input`` is (T, B, *) or (B, T, *) with ``batch_first``; ``lengths`` holds B integers in
    [1, T], in decreasing order when ``enforce_sorted``.
    """
    if not isinstance(input, Tensor) or input.dim() < 2:
        raise ValueError(
            f"expected a padded input of at least 2 dimensions ({'B, T' if batch_first else 'T, B'}"
            f", *), got {input.shape if isinstance(input, Tensor) else type(input).__name__}"
        )
    lengths_t = torch.as_tensor(lengths, device="cpu")
    if lengths_t.is_floating_point() or lengths_t.is_complex() or lengths_t.dtype == torch.bool:
        raise TypeError(f"expected integer lengths, got dtype {lengths_t.dtype}")
    T, B = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
    if lengths_t.shape != (B,):
        raise ValueError(
            f"expected one length per sequence, shape ({B},), got shape {tuple(lengths_t.shape)}"
        )
    bad = (lengths_t < 1) | (lengths_t > T)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"expected every length in [1, {T}] (the padded length), got {int(lengths_t[index])} "
            f"for sequence {index}"
        )
    if enforce_sorted and (lengths_t[:-1] < lengths_t[1:]).any():
        raise ValueError(
            f"expected lengths in decreasing order with enforce_sorted=True, got "
            f"{lengths_t.tolist()}; pass enforce_sorted=False to pack them in any order"
        )
    return torch_rnn.pack_padded_sequence(input, lengths_t, batch_first, enforce_sorted)
