"""codebox's guest-side kernel: runs one cell per turn and reports to the host.

Loaded once into each Python context as the module `_codebox_kernel`. The host hands over the
cell's source through the `_host` door; the kernel runs it in `__main__` like a notebook cell
and reports back through the same door, as JSON:

- the value of a final expression as a MIME bundle (IPython's display protocol), `main=True`;
- `display(...)` output and matplotlib figures as MIME bundles, `main=False`, in order;
- an uncaught exception as name, value and the traceback CPython would print.

Nothing here imports numpy, pandas or matplotlib: they are handled only once the user's code
has imported them.
"""

# Only modules already loaded in the runtime's snapshot are imported up front: anything else
# (traceback alone costs ~17 ms) would slow down every context's start.
import ast
import builtins
import json
import linecache
import os
import sys
import types

import _host

_KERNEL_FILE = "<codebox-kernel>"
_count = 0

# Results larger than this are replaced by a note instead of being sent.
_MAX_MIME_BYTES = 16 * 1024 * 1024
# DataFrames up to this many cells also carry their data as columns.
_MAX_DATA_CELLS = 10_000


# --- the door ----------------------------------------------------------------------------


def _call(message):
    payload = json.dumps(message, ensure_ascii=False, default=str, allow_nan=False)
    return _host.call(payload.encode("utf-8", "surrogatepass"))


def _report(bundle, main):
    try:
        _call({"op": "result", "main": main, "data": bundle})
    except Exception:
        # The host refused it (too large or malformed) and records why; the cell goes on.
        pass


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# --- MIME bundles --------------------------------------------------------------------------

_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
    ("text/latex", "_repr_latex_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)

_BINARY = {"image/png", "image/jpeg", "application/pdf"}


def _text(value):
    try:
        return repr(value)
    except BaseException as e:  # a broken __repr__ must not lose the execution
        return f"<repr failed: {type(e).__name__}: {e}>"


def _b64(data):
    import binascii

    return binascii.b2a_base64(bytes(data), newline=False).decode("ascii")


def _normalise(mime, data):
    """A JSON-safe representation, or None to leave the MIME type out."""
    if isinstance(data, tuple) and data:
        data = data[0]  # (data, metadata)
    if data is None:
        return None
    if mime in _BINARY or mime.startswith("image/") and isinstance(data, (bytes, bytearray)):
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = _b64(data)
        elif not isinstance(data, str):
            return None
    elif mime == "application/json" or mime.endswith("+json"):
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError):
            return None
    elif isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8", "replace")
    elif not isinstance(data, str):
        data = str(data)
    if isinstance(data, str) and len(data) > _MAX_MIME_BYTES:
        return None
    return data


def _bundle(value):
    """The MIME bundle of `value`; `text/plain` is always present."""
    data = {}
    if _is_figure(value):
        return _figure_bundle(value)
    if not isinstance(value, type):  # classes have the methods unbound
        method = getattr(value, "_repr_mimebundle_", None)
        if callable(method):
            try:
                out = method(include=None, exclude=None)
                if isinstance(out, tuple):
                    out = out[0]
                if isinstance(out, dict):
                    for mime, rep in out.items():
                        rep = _normalise(str(mime), rep)
                        if rep is not None:
                            data[str(mime)] = rep
            except Exception:
                pass
        for mime, name in _REPR_METHODS:
            if mime in data:
                continue
            method = getattr(value, name, None)
            if not callable(method):
                continue
            try:
                rep = _normalise(mime, method())
            except Exception:
                continue
            if rep is not None:
                data[mime] = rep
    data["text/plain"] = data.get("text/plain") or _text(value)
    columns = _dataframe_columns(value)
    if columns is not None:
        data["codebox/data"] = columns
    return data


def _dataframe_columns(value):
    """A small pandas DataFrame's data as {column: [values]}, JSON-safe."""
    pandas = sys.modules.get("pandas")
    if pandas is None or not isinstance(value, pandas.DataFrame):
        return None
    if value.size > _MAX_DATA_CELLS:
        return None
    try:
        return {
            str(name): json.loads(column.to_json(orient="values", date_format="iso"))
            for name, column in value.items()
        }
    except Exception:
        return None


# --- matplotlib ---------------------------------------------------------------------------


def _is_figure(value):
    figure = sys.modules.get("matplotlib.figure")
    return figure is not None and isinstance(value, figure.Figure)


def _figure_bundle(fig):
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    bundle = {
        "text/plain": _text(fig),
        "image/png": _b64(buf.getvalue()),
    }
    try:
        chart = _chart(fig)
    except Exception:
        chart = None
    if chart is not None:
        bundle["codebox/chart"] = chart
    return bundle


def _emit_open_figures(skip=None):
    """Every open figure becomes a display result, then is closed (so it is not repeated).
    `skip` is a figure that is about to be shown as the cell's value."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    try:
        numbers = pyplot.get_fignums()
    except Exception:
        return
    for number in numbers:
        try:
            fig = pyplot.figure(number)
            if fig is not skip and (fig.get_axes() or fig.artists or fig.texts):
                _report(_figure_bundle(fig), False)
        except Exception as e:
            sys.stderr.write(f"codebox: could not render figure {number}: {e}\n")
    try:
        pyplot.close("all")
    except Exception:
        pass


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return x if x - x == 0 else None  # None for inf and nan


def _label(artist):
    """An artist's legend label; matplotlib's automatic ones (`_child0`) are not labels."""
    label = artist.get_label() or ""
    return "" if label.startswith("_") else label


def _axis_info(ax):
    info = {
        "title": ax.get_title() or None,
        "x_label": ax.get_xlabel() or None,
        "y_label": ax.get_ylabel() or None,
        "x_scale": ax.get_xscale(),
        "y_scale": ax.get_yscale(),
    }
    for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
        info[f"{name}_ticks"] = [_num(t) for t in axis.get_ticklocs()]
        info[f"{name}_tick_labels"] = [t.get_text() for t in axis.get_ticklabels()]
        info[f"{name}_unit"] = None
    return info


def _axes_chart(ax):
    """The plotted values of one Axes: line, scatter, bar or pie; None if none of those."""
    containers = [c for c in ax.containers if type(c).__name__ == "BarContainer"]
    patches = ax.patches
    wedges = [p for p in patches if type(p).__name__ == "Wedge"]
    lines = ax.get_lines()
    collections = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    chart = _axis_info(ax)
    if wedges:
        labels = [t.get_text() for t in ax.texts]
        chart.update(type="pie", elements=[
            {
                "label": labels[i] if i < len(labels) else str(i),
                "angle": _num(w.theta2 - w.theta1),
                "radius": _num(w.r),
            }
            for i, w in enumerate(wedges)
        ])
        for key in ("x_ticks", "x_tick_labels", "y_ticks", "y_tick_labels"):
            chart.pop(key, None)
        return chart
    if containers:
        elements = []
        vertical = True
        for container in containers:
            group = container.get_label()
            group = "" if group.startswith("_") else group
            for rect in container.patches:
                vertical = getattr(container, "orientation", "vertical") == "vertical"
                value = rect.get_height() if vertical else rect.get_width()
                elements.append({"label": "", "group": group, "value": _num(value)})
        tick_labels = chart["x_tick_labels"] if vertical else chart["y_tick_labels"]
        per_group = len(containers[0].patches)
        for i, element in enumerate(elements):
            j = i % per_group if per_group else 0
            element["label"] = tick_labels[j] if j < len(tick_labels) else str(j)
        chart.update(type="bar", elements=elements)
        return chart
    if lines:
        chart.update(type="line", elements=[
            {
                "label": _label(line),
                "points": [[_num(x), _num(y)] for x, y in zip(line.get_xdata(), line.get_ydata())],
            }
            for line in lines
        ])
        return chart
    if collections:
        chart.update(type="scatter", elements=[
            {
                "label": _label(c),
                "points": [[_num(x), _num(y)] for x, y in c.get_offsets()],
            }
            for c in collections
        ])
        return chart
    return None


def _chart(fig):
    axes = fig.get_axes()
    charts = [c for c in (_axes_chart(ax) for ax in axes) if c is not None]
    if not charts:
        return None
    if len(charts) == 1:
        return charts[0]
    return {"type": "superchart", "title": fig._suptitle.get_text() if fig._suptitle else None,
            "elements": charts}


def _matplotlib_backend_module():
    """A matplotlib backend (selected through MPLBACKEND) that renders with Agg and whose
    `show()` turns the open figures into display results. Built when matplotlib asks for it."""
    from matplotlib.backends import backend_agg

    backend = types.ModuleType("_codebox_mpl_backend")
    backend.FigureCanvas = backend_agg.FigureCanvasAgg
    backend.FigureManager = backend_agg.FigureManagerBase
    backend.backend_version = "codebox"
    backend.show = lambda *args, **kwargs: _emit_open_figures()
    return {backend.__name__: backend}


# --- display() and a small IPython.display ------------------------------------------------


def display(*objs, raw=False, **kwargs):
    """Show each object as a rich result, as IPython's display() does."""
    for obj in objs:
        if raw and isinstance(obj, dict):
            bundle = {str(k): v for k, v in obj.items() if _normalise(str(k), v) is not None}
            bundle.setdefault("text/plain", _text(obj))
            _report(bundle, False)
        else:
            _report(_bundle(obj), False)


class _Rich:
    _mime = "text/plain"

    def __init__(self, data=None, url=None, filename=None, **kwargs):
        if filename is not None and data is None:
            mode = "rb" if self._mime in _BINARY or self._mime.startswith("image/") else "r"
            with open(filename, mode) as f:
                data = f.read()
        self.data = data if data is not None else url

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {self._mime: self.data}

    def __repr__(self):
        return f"<{type(self).__name__} object>"


def _rich(name, mime):
    return type(name, (_Rich,), {"_mime": mime})


class Image(_Rich):
    def __init__(self, data=None, url=None, filename=None, format=None, **kwargs):
        super().__init__(data, url, filename)
        fmt = (format or (filename or "").rsplit(".", 1)[-1] or "png").lower()
        self._mime = "image/jpeg" if fmt in ("jpg", "jpeg") else "image/png"


def _ipython_modules():
    ipython = types.ModuleType("IPython")
    module = types.ModuleType("IPython.display")
    module.display = display
    module.Image = Image
    for name, mime in (("HTML", "text/html"), ("Markdown", "text/markdown"), ("SVG", "image/svg+xml"),
                       ("JSON", "application/json"), ("Latex", "text/latex"), ("Math", "text/latex"),
                       ("Javascript", "application/javascript"), ("Pretty", "text/plain")):
        setattr(module, name, _rich(name, mime))
    module.clear_output = lambda *a, **k: None
    ipython.display = module
    ipython.get_ipython = lambda: None  # libraries probe it: "not inside IPython"
    ipython.__path__ = []
    return {"IPython": ipython, "IPython.display": module}


class _KernelModules:
    """Imports of the kernel's stand-in modules: `IPython.display` (when no real IPython
    exists) and the matplotlib backend. Found last and only on import, so libraries that look
    for IPython in sys.modules do not mistake the kernel for one."""

    _factories = {
        "IPython": _ipython_modules,
        "IPython.display": _ipython_modules,
        "_codebox_mpl_backend": _matplotlib_backend_module,
    }
    _made = {}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in cls._factories:
            return None
        import importlib.util

        if name not in cls._made:
            cls._made.update(cls._factories[name]())
        return importlib.util.spec_from_loader(name, cls)

    @classmethod
    def create_module(cls, spec):
        return cls._made[spec.name]

    @classmethod
    def exec_module(cls, module):
        pass


# --- running a cell -------------------------------------------------------------------------


def _user_traceback(exc):
    """The traceback as CPython prints it, without the kernel's own frames."""
    import traceback

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
    import traceback

    # A cell that does not compile has no frames of its own: show it as CPython does.
    text = (
        "".join(traceback.format_exception_only(type(exc), exc))
        if compiling
        else _user_traceback(exc)
    )
    try:
        _call({
            "op": "error",
            "name": type(exc).__name__,
            "value": value,
            "traceback": text,
            "errno": errno if isinstance(errno, int) else None,
        })
    except Exception:
        pass


_STATEMENT_WORDS = frozenset(
    "import from def class if for while with try del pass return raise global nonlocal"
    " assert async break continue".split()
)
_AUGMENTED = ("+", "-", "*", "/", "//", "%", "**", "&", "|", "^", "@", "<<", ">>")


def _is_statement_line(line):
    """True only for a line that is surely a statement (an assignment, or one that starts
    with a statement keyword), so it has no value to show; lines it misses take the general
    path. (A regex would say the same but costs ~1 ms of every context's start to compile.)"""
    if ";" in line:
        return False
    words = line.split(None, 1)
    if not words or words[0] in _STATEMENT_WORDS or words[0].startswith("@"):
        return bool(words)
    at = line.find("=")
    if at <= 0 or line[at + 1 : at + 2] == "=":
        return False
    target = line[:at].rstrip()
    for op in _AUGMENTED:
        if target.endswith(op):
            target = target[: -len(op)].rstrip()
            break
    return all(part.isidentifier() for part in target.split("."))


def _compile_cell(source, filename):
    """The cell's statements and, if it ends in an expression, that expression separately."""
    if "\n" not in source.strip():
        # One line (`df.head()`, `x = 1`) is compiled directly: several times cheaper than
        # going through the AST.
        if _is_statement_line(source):
            return compile(source, filename, "exec"), None
        try:
            return None, compile(source, filename, "eval")
        except SyntaxError:
            pass
    tree = ast.parse(source, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, filename, "exec")
    return body, (compile(last, filename, "eval") if last is not None else None)


def _fetch_cell():
    """The cell's source, the environment variables for this execution only, and whether
    it runs as a script.

    The host answers with a JSON header line, then the source."""
    blob = _host.call(b'{"op":"code"}')
    header, _, source = blob.partition(b"\n")
    options = json.loads(header) if header != b"{}" else {}
    script = options.get("mode") == "script"
    return source.decode("utf-8", "surrogateescape"), options.get("env"), script


# The host's turn that runs a cell; `_fast_turns` recognises it by this exact text.
_RUN_TURN = "__import__('_codebox_kernel').run()"


def _fast_turns():
    """Lets the host's run turn skip the runtime's per-turn parse.

    The runtime compiles every turn's source through the AST, about half the cost of a tiny
    cell; the run turn's source is always the same line, so it goes straight to `run()`. Any
    other turn takes the runtime's own path. A runtime without this hook just stays slower."""
    try:
        import _reactor

        general = _reactor._run_turn
    except (ImportError, AttributeError):
        return
    if getattr(general, "__name__", "") == "_run_turn_fast":
        return

    def _run_turn_fast(text, name):
        if text == _RUN_TURN:
            return run()
        return general(text, name)

    _reactor._run_turn = _run_turn_fast


def run():
    """One execution: fetch the cell from the host, run it, report."""
    source, env, script = _fetch_cell()
    if not env:
        return _run_cell(source, script)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return _run_cell(source, script)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_cell(source, script=False):
    """Runs a cell; a script (as `python3 -c` runs one) shows no value and its tracebacks
    name the file `<string>`."""
    global _count
    _count += 1
    filename = "<string>" if script else f"<cell {_count}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = sys.modules["__main__"].__dict__
    try:
        if script:
            body, last = compile(source, filename, "exec"), None
        else:
            body, last = _compile_cell(source, filename)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        _report_error(exc, compiling=True)
        return
    value = None
    try:
        if body is not None:
            exec(body, namespace)
        if last is not None:
            value = eval(last, namespace)
    except SystemExit:
        _flush()
        raise
    except BaseException as exc:
        _flush()
        _emit_open_figures()
        _report_error(exc)
        return
    _flush()
    # Figures drawn by the cell come before its value, as in a notebook.
    _emit_open_figures(skip=value)
    if value is not None:
        namespace["_"] = value
        _report(_bundle(value), True)
    _flush()


def _setup():
    """Per-instance set-up; run again as the first turn of a context restored from a
    template, where the streams, environment and working directory are new."""
    # Streams flush at each newline so the host can forward output as it is written.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass
    try:
        os.chdir(os.environ.get("PWD") or os.environ.get("HOME", "/home/user"))
    except OSError:
        pass
    builtins.display = display
    if _KernelModules not in sys.meta_path:
        sys.meta_path.append(_KernelModules)
    _fast_turns()


# --- templates -----------------------------------------------------------------------------
#
# A template build runs the recipe's setup as a cell, then `_template_mark()`, the warm-up as a
# cell, and `_template_seal()` as the last turn before the host snapshots the memory.

_template_names = None


def _template_mark():
    """The names in `__main__` now are the template's own; the warm-up's are dropped."""
    global _template_names
    _template_names = set(sys.modules["__main__"].__dict__)


def _template_seal(first_free_fd):
    """Forgets the build's traces and prints, as one JSON line, what could not be snapshotted
    (file descriptors from `first_free_fd` on that are still open) and the clock reading."""
    global _count
    import gc
    import time

    namespace = sys.modules["__main__"].__dict__
    keep = _template_names if _template_names is not None else set(namespace)
    for name in set(namespace) - keep:
        del namespace[name]
    namespace.pop("_", None)
    for key in [k for k in linecache.cache if isinstance(k, str) and k.startswith("<cell ")]:
        del linecache.cache[key]
    _count = 0
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
    font_manager = sys.modules.get("matplotlib.font_manager")
    if font_manager is not None and hasattr(font_manager, "_get_font"):
        # Cached fonts hold their files open; an fd cannot survive the snapshot.
        font_manager._get_font.cache_clear()
    gc.collect()
    leaked = _open_fds(first_free_fd)
    gc.freeze()  # the collector never touches the template's objects: they stay shared
    print(json.dumps({"leaked_fds": leaked, "monotonic_ns": time.monotonic_ns()}))


def _open_fds(first):
    import gc
    import io

    names = {}
    for obj in gc.get_objects():
        if isinstance(obj, io.IOBase):
            try:
                if not obj.closed:
                    names[obj.fileno()] = str(getattr(obj, "name", type(obj).__name__))
            except Exception:
                pass
    leaked = []
    for fd in range(first, 1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        leaked.append(f"fd {fd}" + (f" ({names[fd]})" if fd in names else ""))
    return leaked


_setup()
