//! Performance regressions caught without timing: fuel (executed wasm instructions) is
//! deterministic, so a fixed workload must burn what it burned when the value was recorded.

use codebox::ContextOptions;

use crate::common::{metered_engine, ok};

/// Pure-Python work of the kinds agents run: recursion, dicts and strings, JSON, regex, sorting.
const WORKLOAD: &str = r#"
import json, random, re
def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)
counts = {}
for i in range(5000):
    key = "k" + str(i % 97)
    counts[key] = counts.get(key, 0) + len(key)
doc = json.dumps([{"id": i, "name": f"n{i}", "v": i / 3} for i in range(500)])
random.seed(7)
xs = sorted(random.random() for _ in range(5000))
found = re.findall(r"\d+", "abc 123 def 4567 " * 200)
(fib(18), len(counts), len(json.loads(doc)), round(xs[0], 6), len(found))
"#;

/// Fuel the workload burned when recorded (first execution in a fresh context).
const RECORDED_FUEL: u64 = 106_368_141;

#[tokio::test]
async fn a_fixed_workload_burns_the_recorded_fuel_within_three_percent() {
    let ctx = metered_engine()
        .create_context(ContextOptions::default())
        .await
        .unwrap();
    let run = ok(&ctx, WORKLOAD).await;
    assert_eq!(run.text(), Some("(2584, 97, 500, 0.000158, 400)"));
    let fuel = run.fuel_consumed.expect("the engine meters fuel");
    let drift = (fuel as f64 - RECORDED_FUEL as f64) / RECORDED_FUEL as f64;
    assert!(
        drift.abs() < 0.03,
        "the workload burned {fuel} fuel, {:+.1}% from the recorded {RECORDED_FUEL}. If the change \
         is intended (kernel, runtime or engine update), record the new value.",
        drift * 100.0
    );
}
