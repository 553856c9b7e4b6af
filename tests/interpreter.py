"""Triton's interpreter without its per-call cost: patch the language once per launch.

Under ``TRITON_INTERPRET=1`` a launch patches ``triton.language`` for the interpreter
(``_patch_lang``: every builtin, found by ``inspect.getmembers``, wrapped around the interpreter's
builder) and undoes it when the launch ends; Triton 3.6 also does it again at every call of a
``@triton.jit`` helper inside the kernel (``InterpretedFunction.__call__``), never undone, each
time to the same effect. Our kernels call helpers (``_sigmoid``, ``_lstm_update`` …) dozens of
times a step, so that repetition was most of an interpreted test's time, and in
:mod:`tests.backends.concurrent` the programs' threads queued for it. :func:`patch_once_per_launch`
makes a helper's call patch only the language modules the launch's patch did not (Triton's
own helpers, such as ``tl.zeros``, read ``triton.language.core``, which our kernels' patch does
not cover), so usually nothing; what the kernels compute is unchanged (the helpers run under
the patch they would have put in place).

It reaches into the interpreter's internals, which Triton does not promise to keep: where they
have changed it says why and installs nothing (the tests then run at the interpreter's own pace).
"""

from __future__ import annotations

import threading
import types


def _stand_in(modules: set[object]) -> types.FunctionType:
    """A function whose globals hold just ``modules``: what ``_patch_lang`` reads of one."""
    return types.FunctionType((lambda: None).__code__, {m.__name__: m for m in modules})


def patch_once_per_launch() -> str | None:
    """Install the once-per-launch patch (idempotent); None, or why it could not be."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError as error:
        return f"Triton's interpreter cannot be imported: {error}"
    original = getattr(interpreter, "_patch_lang", None)
    if original is None or not hasattr(interpreter, "_LangPatchScope"):
        return "Triton's interpreter has no _patch_lang or _LangPatchScope (changed internals)"
    if getattr(original, "once_per_launch", False):
        return None
    lock = threading.Lock()
    patched: set[object] = set()  # the language modules patched since the launch began
    in_launch = False

    def languages(fn) -> set[object]:
        """The language modules ``_patch_lang`` patches for fn: those in its module's globals
        (triton.language for our kernels; triton.language.core for Triton's own helpers, such
        as ``tl.zeros``, which a kernel's patch does not cover, and triton.language too once
        the interpreter has rewritten one of them: it adds its own globals to the module's)."""
        return {v for v in list(fn.__globals__.values()) if v is tl or v is tl.core}

    def patch_lang(fn):
        nonlocal in_launch
        wanted = languages(fn)
        with lock:
            if in_launch:  # a helper's call: patch only what the launch's patch did not
                missing = wanted - patched
                patched.update(missing)
                # (never undone, as Triton leaves a helper's patch)
                return original(_stand_in(missing)) if missing else interpreter._LangPatchScope()
            scope = original(fn)
            patched.update(wanted)
            in_launch = True
        restore = scope.restore

        def restore_and_release():
            nonlocal in_launch
            with lock:
                restore()
                in_launch = False
                patched.clear()

        scope.restore = restore_and_release
        return scope

    patch_lang.once_per_launch = True
    interpreter._patch_lang = patch_lang
    return None
