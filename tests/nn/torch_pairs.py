"""Build a gatedrnn layer and its torch.nn twin with the same weights, run both on the same
input in any form (padded, packed sorted or unsorted, unbatched), and collect outputs and grads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import gatedrnn

TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
OUR_LAYERS = {"rnn": gatedrnn.RNN, "lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU}
FORMS = ("padded", "packed_sorted", "packed_unsorted", "unbatched")


@dataclass
class Result:
    output: torch.Tensor  # padded, time-major or as the module returned it
    states: tuple[torch.Tensor, ...]
    grads: dict[str, torch.Tensor]  # "input", "h_0", "c_0" and every parameter name


def make_inputs(form, T, B, I, batch_first, dtype, gen):
    """A padded input leaf and its lengths (None unless packed)."""
    if form == "unbatched":
        return torch.randn(T, I, dtype=dtype, generator=gen), None
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, dtype=dtype, generator=gen)
    if form == "padded":
        return x, None
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[torch.randint(0, B, (1,), generator=gen)] = T  # the longest fills the padding
    if form == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    return x, lengths


def make_states(module, form, B, dtype, gen):
    L = module.num_layers * (2 if module.bidirectional else 1)
    H = module.hidden_size
    P = getattr(module, "proj_size", 0) or H
    lead = (L,) if form == "unbatched" else (L, B)
    h = torch.randn(*lead, P, dtype=dtype, generator=gen)
    if isinstance(module, (nn.LSTM, gatedrnn.LSTM)):
        return (h, torch.randn(*lead, H, dtype=dtype, generator=gen))
    return (h,)


def run(module, x, lengths, states, batch_first, grad_seed=7):
    """Forward and backward through ``module``; ``states`` may be None for zero initial states."""
    x = x.detach().clone().requires_grad_(True)
    leaves = {"input": x}
    hx = None
    if states is not None:
        states = tuple(s.detach().clone().requires_grad_(True) for s in states)
        leaves.update(zip(("h_0", "c_0")[: len(states)], states, strict=True))
        hx = states if len(states) == 2 else states[0]
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(
            x, lengths, batch_first=batch_first, enforce_sorted=bool(_is_sorted(lengths))
        )
    out, final = module(inp, hx)
    if isinstance(out, PackedSequence):
        out = pad_packed_sequence(out, batch_first=batch_first)[0]
    final = final if isinstance(final, tuple) else (final,)
    gen = torch.Generator().manual_seed(grad_seed)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
    for s in final:
        loss = loss + (s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum()
    params = dict(module.named_parameters())
    wrt = list(leaves.values()) + list(params.values())
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    names = list(leaves) + list(params)
    return Result(out, final, {n: g for n, g in zip(names, grads, strict=True)})


def _is_sorted(lengths):
    return bool((lengths[:-1] >= lengths[1:]).all())
