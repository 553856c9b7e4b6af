"""The compiled loops of the ``cpu`` backend, built on first use.

``csrc/loops.cpp`` is compiled by :func:`torch.utils.cpp_extension.load` the first time a
``cpu``-backend layer runs, and cached by torch (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``), which rebuilds it when the source changes. It needs a C++
compiler, ninja (``pip install gatedrnn[fast]``) and a CPU with AVX2; it is built for AVX-512
where torch uses AVX-512. When any is missing, or the
build fails, a single warning says why and the backend runs its PyTorch loops, which compute the
same thing more slowly. ``GATEDRNN_CPU_EXTENSION=0`` turns the compiled loops off. Loading
happens under our own lock, so that a process killed while loading cannot leave the next one
waiting forever on torch's (see :func:`_build_lock`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["compiled_loops", "unavailable_reason"]

logger = logging.getLogger(__name__)
_NAME = "gatedrnn_cpu_loops"
_SOURCE = Path(__file__).parent / "csrc" / "loops.cpp"
# -fopenmp: ATen's parallel_for is an inline OpenMP region, serial when compiled without it (the
# runtime is torch's own libgomp, already loaded under the same soname)
_COMMON = ["-O3", "-fopenmp", "-ffp-contract=fast"]
_ISA = {
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
    "AVX512": [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mfma",
        "-DCPU_CAPABILITY_AVX512",
        "-DCPU_CAPABILITY=AVX512",
    ],
}
_state: dict[str, object] = {}


def _gate_panels_forced() -> bool:
    """``GATEDRNN_CPU_GATE_PANELS=1``: build the forward steps that fuse the cell's pointwise
    work into the recurrent product (the AVX-512 build's) into the AVX2 build too, where they
    are correct but slower (16 vector registers); so that a machine without AVX-512 can test
    them (``tests/backends/test_compiled.py``)."""
    return os.environ.get("GATEDRNN_CPU_GATE_PANELS", "0") == "1"


def _module_name() -> str:
    """One build per instruction set, so a cache shared between machines never mixes them."""
    panels = "_gatepanels" if _gate_panels_forced() else ""
    return f"{_NAME}_{torch.backends.cpu.get_cpu_capability().lower()}{panels}"


def _flags() -> list[str]:
    """The compiler's flags for this machine's instruction set."""
    forced = ["-DGATEDRNN_GATE_PANELS"] if _gate_panels_forced() else []
    return _COMMON + _ISA[torch.backends.cpu.get_cpu_capability()] + forced


def unavailable_reason() -> str | None:
    """Why the compiled loops cannot be built here, or None if nothing stands in the way."""
    if os.environ.get("GATEDRNN_CPU_EXTENSION", "1") == "0":
        return "GATEDRNN_CPU_EXTENSION=0"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"the CPU lacks AVX2 ({torch.backends.cpu.get_cpu_capability()})"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler on PATH"
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed (pip install 'gatedrnn[fast]')"
    return None


def _build_directory() -> Path | None:
    """torch's build folder for the module (a private torch helper: None if it moved)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(_module_name(), verbose=False))
    except Exception:
        logger.debug("could not find the build folder", exc_info=True)
        return None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Hold our own lock on the build folder while torch loads (and, if needed, builds) the
    module.

    torch's lock is a file that its holder deletes when done (``lock`` in the build folder,
    taken by every process that loads the module, built or not): a process killed while holding
    it (a study's worker ended by Ctrl-C while it loaded) leaves the file, and every later load
    waits on it forever. Ours is an ``flock``, which the system releases when its holder dies;
    as every gatedrnn process loads under it, a ``lock`` file found while holding it was left by
    a dead process and is removed. Without ``fcntl`` (Windows) a ``lock`` file older than a
    build can take (10 minutes) is taken for stale instead.
    """
    folder = _build_directory()
    if folder is None:
        yield
        return
    stale = folder / "lock"
    try:
        import fcntl
    except ImportError:  # Windows
        if stale.exists() and time.time() - stale.stat().st_mtime > 600:
            warnings.warn(
                f"gatedrnn: removing a stale build lock {stale}", RuntimeWarning, stacklevel=4
            )
            stale.unlink(missing_ok=True)
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "gatedrnn.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if stale.exists():
                logger.info("removing %s, left by a process that died while loading", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compiled_loops() -> ModuleType | None:
    """The compiled module, or None after one warning that says why it is not available."""
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    module, reason = None, unavailable_reason()
    if reason is None:
        from torch.utils.cpp_extension import load

        logger.info("building the compiled CPU loops (once; cached by torch)")
        try:
            with _build_lock():
                module = load(
                    _module_name(), [str(_SOURCE)], extra_cflags=_flags(),
                    extra_ldflags=["-fopenmp"],
                )  # fmt: skip
        except Exception as error:  # a failed build must not stop the layer: say it and go on
            reason = f"the build failed: {str(error).strip().splitlines()[-1][:300]}"
        if module is None:  # a compiler without OpenMP (Apple clang): the loops, single-threaded
            try:
                serial = [flag for flag in _flags() if flag != "-fopenmp"]
                with _build_lock():
                    module = load(_module_name(), [str(_SOURCE)], extra_cflags=serial)
                warnings.warn(
                    f"gatedrnn: the compiled CPU loops built without OpenMP ({reason}); they "
                    "run on one thread",
                    RuntimeWarning,
                    stacklevel=3,
                )
                reason = None
            except Exception:
                logger.debug("the build without OpenMP failed too", exc_info=True)
    if reason is not None:
        warnings.warn(
            f"gatedrnn: the compiled CPU loops are not available ({reason}); the 'cpu' backend "
            "runs its PyTorch loops instead, which are slower",
            RuntimeWarning,
            stacklevel=3,
        )
    _state["module"] = module
    return module
