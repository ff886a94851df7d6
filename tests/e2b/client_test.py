"""Drives `codebox serve` with the unmodified e2b-code-interpreter SDK in debug mode.

Run by tests/all/e2b.rs, which starts a server, creates a sandbox, and sets
E2B_SANDBOX_URL=http://127.0.0.1:PORT/e2b/TOKEN and E2B_DEBUG=true.
"""

import base64
import sys
import traceback

from e2b_code_interpreter import Sandbox

checks = []


def check(fn):
    checks.append(fn)
    return fn


@check
def state_persists_across_run_code(sbx):
    sbx.run_code("x = 41")
    execution = sbx.run_code("x + 1")
    assert execution.text == "42", execution
    assert execution.error is None
    assert execution.execution_count >= 2, execution.execution_count


@check
def stdout_and_stderr_callbacks(sbx):
    out, err = [], []
    execution = sbx.run_code(
        "import sys\nprint('hello')\nprint('oops', file=sys.stderr)",
        on_stdout=lambda m: out.append(m.line),
        on_stderr=lambda m: err.append(m.line),
    )
    assert "".join(out) == "hello\n", out
    assert "".join(err) == "oops\n", err
    assert execution.logs.stdout == ["hello\n"], execution.logs


@check
def errors_have_name_value_and_traceback(sbx):
    execution = sbx.run_code("def f():\n    return 1 / 0\nf()")
    error = execution.error
    assert error is not None
    assert error.name == "ZeroDivisionError", error.name
    assert error.value == "division by zero", error.value
    assert "line 2, in f" in error.traceback, error.traceback


@check
def dataframe_result_has_html_and_data(sbx):
    execution = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    result = execution.results[0]
    assert result.is_main_result
    assert "<table" in result.html
    assert result.data == {"a": [1, 2], "b": ["x", "y"]}, result.data


@check
def plot_result_has_png_and_chart(sbx):
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()"
    )
    figures = [r for r in execution.results if r.png]
    assert len(figures) == 1, execution.results
    png = base64.b64decode(figures[0].png)
    assert png.startswith(b"\x89PNG"), png[:8]
    assert not figures[0].is_main_result
    chart = figures[0].chart
    assert chart is not None and chart.type.value == "line", chart
    assert chart.title == "squares"
    assert [tuple(p) for p in chart.elements[0].points] == [(1, 1), (2, 4), (3, 9)]


@check
def code_contexts(sbx):
    ctx = sbx.create_code_context(cwd="/home/user/work")
    assert ctx.cwd == "/home/user/work", ctx
    sbx.run_code("y = 'in ctx'", context=ctx)
    assert sbx.run_code("y", context=ctx).text == "'in ctx'"
    assert sbx.run_code("import os; os.getcwd()", context=ctx).text == "'/home/user/work'"
    assert any(c.id == ctx.id for c in sbx.list_code_contexts())
    sbx.restart_code_context(ctx)
    assert sbx.run_code("y", context=ctx).error.name == "NameError"
    sbx.remove_code_context(ctx)
    assert all(c.id != ctx.id for c in sbx.list_code_contexts())


@check
def files(sbx):
    sbx.files.write("/home/user/data/in.csv", "a,b\n1,2\n")
    assert sbx.files.read("/home/user/data/in.csv") == "a,b\n1,2\n"
    execution = sbx.run_code("import pandas as pd\npd.read_csv('/home/user/data/in.csv').b.sum()")
    assert execution.text == "np.int64(2)", execution
    assert sbx.files.make_dir("/home/user/newdir") is True
    assert sbx.files.make_dir("/home/user/newdir") is False
    names = sorted(e.name for e in sbx.files.list("/home/user"))
    assert "data" in names and "newdir" in names, names
    sbx.files.remove("/home/user/newdir")
    assert "newdir" not in [e.name for e in sbx.files.list("/home/user")]
    sbx.run_code("open('/home/user/out.txt', 'w').write('from python')")
    assert sbx.files.read("/home/user/out.txt") == "from python"


@check
def sandbox_is_running(sbx):
    assert sbx.is_running() is True


def main():
    sbx = Sandbox.create(debug=True)
    passed = failed = 0
    for fn in checks:
        try:
            fn(sbx)
            passed += 1
            print(f"ok   {fn.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
