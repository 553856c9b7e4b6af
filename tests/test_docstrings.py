"""The examples in the package's docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gatedrnn

# Modules that need an optional extra or a GPU to import; their docstrings hold no examples.
_OPTIONAL = {"gatedrnn.study.ray_executor", "gatedrnn.backends.triton_kernels"}

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(gatedrnn.__path__, "gatedrnn.")
    if info.name not in _OPTIONAL
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_examples_are_found():
    attempted = sum(
        doctest.testmod(importlib.import_module(name), report=False).attempted for name in MODULES
    )
    assert attempted >= 5
