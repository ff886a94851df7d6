"""The workloads of the native-vs-codebox comparison (benches/compare.rs).

The same file runs on the host's CPython and inside codebox. Setup (building the data) is not
timed; each workload runs once to warm up, then REPEATS times, and the median is reported.
Prints one JSON object: {"workload": median_ms, ...}.
"""

import json
import random
import re
import statistics
import time

REPEATS = int(globals().get("REPEATS", 5))


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fib_27():
    fib(27)


def dict_str_loop():
    counts = {}
    for i in range(200_000):
        key = "key" + str(i % 5000)
        counts[key] = counts.get(key, 0) + len(key)
    return len(counts)


DOC = json.dumps(
    [{"id": i, "name": f"item{i}", "tags": ["a", "b", "c"], "value": i * 0.5} for i in range(12_000)]
)  # about 1 MB


def json_1mb():
    json.dumps(json.loads(DOC))


TEXT = "The quick brown fox jumps over the lazy dog 12345 fox@example.com\n" * 16_000  # ~1 MB
PATTERN = re.compile(r"[\w.]+@[\w.]+|\d+")


def regex_1mb():
    return len(PATTERN.findall(TEXT))


random.seed(1)
FLOATS = [random.random() for _ in range(1_000_000)]


def sort_1e6_floats():
    sorted(FLOATS)


import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MATRIX = np.random.default_rng(1).random((500, 500))


def numpy_matmul_500():
    MATRIX @ MATRIX


FRAME = pd.DataFrame(
    {
        "key": np.random.default_rng(2).integers(0, 100, 100_000),
        "value": np.random.default_rng(3).random(100_000),
    }
)


def pandas_groupby_100k():
    FRAME.groupby("key").value.agg(["sum", "mean", "count"])


WORKLOADS = [
    fib_27,
    dict_str_loop,
    json_1mb,
    regex_1mb,
    sort_1e6_floats,
    numpy_matmul_500,
    pandas_groupby_100k,
]


def median_ms(fn):
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


print(json.dumps({fn.__name__: median_ms(fn) for fn in WORKLOADS}))
