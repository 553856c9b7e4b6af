"""Property-based tests: random shapes, lengths and flags against torch.nn (float64)."""

from __future__ import annotations

import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.nn.test_torch_equivalence import build_pair, compare
from tests.nn.torch_pairs import make_states, run


@st.composite
def configs(draw):
    cell = draw(st.sampled_from(["rnn", "lstm", "gru"]))
    hidden = draw(st.integers(1, 9))
    kwargs = dict(
        input_size=draw(st.integers(1, 7)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
    )
    if cell == "lstm" and hidden > 1 and draw(st.booleans()):
        kwargs["proj_size"] = draw(st.integers(1, hidden - 1))
    if cell == "rnn":
        kwargs["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    T = draw(st.integers(1, 8))
    B = draw(st.integers(1, 5))
    packed = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if packed else None
    return cell, kwargs, T, B, lengths, draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_random_configurations_match_torch(config):
    cell, kwargs, T, B, lengths, with_state, seed = config
    theirs, ours = build_pair(cell, torch.float64, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    shape = (B, T, kwargs["input_size"]) if kwargs["batch_first"] else (T, B, kwargs["input_size"])
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    if lengths is not None:  # any order, and the longest need not fill the padding
        lengths = torch.tensor(lengths)
    states = make_states(theirs, "padded", B, torch.float64, gen) if with_state else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = run(theirs, x, lengths, states, kwargs["batch_first"])
    actual = run(ours, x, lengths, states, kwargs["batch_first"])
    compare(actual, expected, f"{cell} {kwargs}")
