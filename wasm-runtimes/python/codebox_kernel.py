"""codebox's guest-side kernel: runs one cell per turn and reports to the host.

Loaded once into each Python context as the module `_codebox_kernel`. The host hands over the
cell's source through the `_host` door; the kernel runs it in `__main__` like a notebook cell
(the value of a final expression is reported as the result, not printed) and reports results
and uncaught exceptions back through the same door as JSON.
"""

import ast
import json
import linecache
import os
import sys
import traceback

import _host

_KERNEL_FILE = "<codebox-kernel>"
_count = 0


def _call(message):
    return _host.call(json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _report_result(value, main):
    try:
        text = repr(value)
    except BaseException as e:  # a broken __repr__ must not lose the execution
        text = f"<repr failed: {type(e).__name__}: {e}>"
    _call({"op": "result", "main": main, "data": {"text/plain": text}})


def _user_traceback(exc):
    """The traceback as CPython prints it, without the kernel's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == _KERNEL_FILE:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _report_error(exc, compiling=False):
    try:
        value = str(exc)
    except BaseException:
        value = "<str failed>"
    errno = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    _call(
        {
            "op": "error",
            "name": type(exc).__name__,
            "value": value,
            # A cell that does not compile has no frames of its own: show it as CPython does.
            "traceback": "".join(traceback.format_exception_only(type(exc), exc))
            if compiling
            else _user_traceback(exc),
            "errno": errno if isinstance(errno, int) else None,
        }
    )


def _compile_cell(source, filename):
    """The cell's statements and, if it ends in an expression, that expression separately."""
    tree = ast.parse(source, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, filename, "exec")
    return body, (compile(last, filename, "eval") if last is not None else None)


def run():
    """One execution: fetch the cell from the host, run it, report."""
    global _count
    source = _host.call(b'{"op":"code"}').decode("utf-8", "surrogateescape")
    _count += 1
    filename = f"<cell {_count}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = sys.modules["__main__"].__dict__
    try:
        body, last = _compile_cell(source, filename)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        _report_error(exc, compiling=True)
        return
    try:
        exec(body, namespace)
        if last is not None:
            value = eval(last, namespace)
            if value is not None:
                namespace["_"] = value
                _report_result(value, True)
    except SystemExit:
        _flush()
        raise
    except BaseException as exc:
        _flush()
        _report_error(exc)
    finally:
        _flush()


def _setup():
    # Streams flush at each newline so the host can forward output as it is written.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass
    try:
        os.chdir(os.environ.get("HOME", "/home/user"))
    except OSError:
        pass


_setup()
