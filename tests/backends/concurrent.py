"""Run a Triton kernel's programs concurrently under the interpreter, as a GPU runs them.

Triton's interpreter (``TRITON_INTERPRET=1``) runs a grid's programs one after another, so a
kernel whose programs wait for each other (the persistent kernels' grid barrier) can only be run
there as a single program. :func:`concurrent_programs` runs every program of a launch in a thread
of its own instead, all at once: a barrier then really waits for the others, a program that reads
what another has not yet written reads the poison, and the launchers plan their grids as for a
GPU (``gpu.INTERPRETED_SMS``): many programs of a GPU's tile sizes, several batch groups.

Threads switch under the GIL, so the interleavings are coarse (a program runs until it waits or
its time slice ends) but real; the interpreter's atomics are the hardware's, on shared memory.

It reaches into the interpreter's internals (``GridExecutor.__call__``, the builder's grid
index), which Triton does not promise to keep: :func:`unsupported` says why it cannot run on the
installed version, and the tests that need it skip with that reason.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time

from gatedrnn.backends import gpu

_NEEDED = (
    "GridExecutor", "interpreter_builder", "_patch_lang", "_implicit_cvt", "InterpreterError",
)  # fmt: skip


_ACCESSES = ("create_load", "create_masked_load", "create_descriptor_load", "create_masked_store")
"""The interpreter builder's memory accesses, each paused at random (``jitter``)."""


def unsupported() -> str | None:
    """Why the installed Triton's interpreter cannot be run concurrently here, or None."""
    try:
        from triton.runtime import interpreter
    except ImportError as error:
        return f"Triton's interpreter cannot be imported: {error}"
    missing = [name for name in _NEEDED if not hasattr(interpreter, name)]
    if missing:
        return f"Triton's interpreter has no {', '.join(missing)} (changed internals)"
    executor = interpreter.GridExecutor
    if not all(hasattr(executor, name) for name in ("_init_args_hst", "_restore_args_dev")):
        return "Triton's interpreter GridExecutor has changed"
    return None


class _OtherProgramFailed(RuntimeError):
    """Raised in a program waiting at a barrier when another program of its launch failed."""


def _caused_by(error: BaseException, kind: type) -> bool:
    """Whether error is a ``kind`` or was raised from one (the interpreter wraps a kernel's
    errors once per function call)."""
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__
    return False


def _run_grid(fn, args: dict, grid: tuple[int, int, int], builder, failed: threading.Event) -> None:
    """Every program of ``grid`` in its own thread, all started before any is waited for; the
    first error any of them raised, re-raised here (``failed`` tells the others, which would
    wait for it at their next barrier, to stop)."""
    errors: list[BaseException] = []

    def program(x: int, y: int, z: int) -> None:
        try:
            builder.set_grid_idx(x, y, z)
            fn(**args)
        except BaseException as error:  # re-raised in the caller's thread
            if not _caused_by(error, _OtherProgramFailed):
                errors.append(error)
            failed.set()

    threads = [
        threading.Thread(target=program, args=(x, y, z), name=f"program ({x}, {y}, {z})")
        for x in range(grid[0])
        for y in range(grid[1])
        for z in range(grid[2])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    if failed.is_set():
        raise RuntimeError("a program stopped without an error of its own")


@contextlib.contextmanager
def concurrent_programs(
    multiprocessors: int = 16, *, jitter: float = 0.0, pause: float = 2e-3, poll: float = 2e-4,
    switch_interval: float = 1e-3, spin_limit: int = 1 << 16,
):  # fmt: skip
    """Within the block, interpreted launches run all their programs at once (one thread each),
    and the gatedrnn launchers plan grids for a GPU of ``multiprocessors`` (at most that many
    programs per launch). ``jitter``: the probability that a program sleeps (up to ``pause``
    seconds) before a memory access, so that the others run ahead of it in varied orders (a
    race shows sooner). A program polling a barrier (an atomic add of zero) sleeps ``poll``
    seconds after each look, so that the spinning does not hold the GIL from the programs it
    waits for; ``switch_interval``: the GIL's (1 ms: at 0.1 ms the switching took a quarter
    of the time, and mutations of the barrier, the TMA ring and the K split's pair barrier
    failed the tests no more often than at 1 ms, where a program runs further ahead of the
    others). A barrier gives up (the kernels' fault) after ``spin_limit`` looks, ≥ spin_limit·poll
    seconds, and at once where another program of the launch failed."""
    reason = unsupported()
    if reason:
        raise RuntimeError(reason)
    import inspect

    import triton
    from triton.runtime import interpreter as interp

    builder = interp.interpreter_builder
    local = threading.local()
    failed = threading.Event()

    class ThreadGridBuilder(type(builder)):
        """The interpreter's builder with a grid index per thread (each thread one program)."""

        @property
        def grid_idx(self):
            return getattr(local, "grid_idx", None)

        @grid_idx.setter
        def grid_idx(self, value):
            local.grid_idx = value

        def _pause(self):
            if jitter and random.random() < jitter:
                time.sleep(random.uniform(0.0, pause))

        def create_atomic_rmw(self, op, ptr, val, *args, **kwargs):
            if failed.is_set():
                raise _OtherProgramFailed("another program of this launch failed")
            result = super().create_atomic_rmw(op, ptr, val, *args, **kwargs)
            if not val.data.any():  # adding zero: a program polling a barrier; let others run
                time.sleep(poll)
                self._pause()  # now and then right as it leaves: the others run ahead of it
            return result

    def paused(name: str):
        """The builder's memory access ``name``, after a random pause (``jitter``)."""
        access = getattr(type(builder), name)

        def method(self, *args, **kwargs):
            self._pause()
            return access(self, *args, **kwargs)

        return method

    for name in _ACCESSES:
        setattr(ThreadGridBuilder, name, paused(name))

    def call(self, *args_dev, **kwargs):
        # GridExecutor.__call__ of Triton 3.6, with the programs run concurrently
        argspec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in argspec.args}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        for hook in self.pre_run_hooks:
            hook(*args_hst, **kwargs_hst)
        patch_scope = patch_lang(self.fn)
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {
                name: arg if name in self.constexprs else interp._implicit_cvt(arg)
                for name, arg in args.items()
            }
            grid = self.grid(args) if callable(self.grid) else self.grid
            grid = tuple(grid) + (1,) * (3 - len(grid))
            builder.set_grid_dim(*grid)
            failed.clear()
            try:
                _run_grid(self.fn, args, grid, builder, failed)
            except Exception as error:
                if triton.knobs.compilation.front_end_debugging:
                    raise
                raise interp.InterpreterError(repr(error)) from error
        finally:
            patch_scope.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    # A device function's call (tl.sum …) patches triton.language again, in whichever program
    # thread calls it: one program iterating a module's globals while another sets attributes
    # there raised "dictionary changed size during iteration" (rarely). One patch at a time.
    original_patch, patching = interp._patch_lang, threading.RLock()

    def patch_lang(fn):
        with patching:
            return original_patch(fn)

    original_class, original_call = type(builder), interp.GridExecutor.__call__
    original_sms, original_interval = gpu.INTERPRETED_SMS, sys.getswitchinterval()
    original_limit = gpu.SPIN_LIMIT
    builder.__class__ = ThreadGridBuilder
    interp.GridExecutor.__call__ = call
    interp._patch_lang = patch_lang
    gpu.INTERPRETED_SMS, gpu.SPIN_LIMIT = multiprocessors, spin_limit
    sys.setswitchinterval(switch_interval)
    try:
        yield
    finally:
        builder.__class__ = original_class
        interp.GridExecutor.__call__ = original_call
        interp._patch_lang = original_patch
        gpu.INTERPRETED_SMS, gpu.SPIN_LIMIT = original_sms, original_limit
        sys.setswitchinterval(original_interval)
