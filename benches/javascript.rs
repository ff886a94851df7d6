//! Criterion benches of JavaScript and TypeScript contexts: `create`, `execute_warm`,
//! `transform`.
//!
//! Run: `cargo bench --bench javascript` (`-- --quick` for a smoke run).

use codebox::{ContextOptions, Engine, Language};
use criterion::{Criterion, criterion_group, criterion_main};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

fn options(language: Language) -> ContextOptions {
    ContextOptions::new().language(language)
}

fn create(c: &mut Criterion) {
    let (rt, engine) = (
        runtime(),
        Engine::builder().max_contexts(64).build().unwrap(),
    );
    let mut group = c.benchmark_group("create");
    group.bench_function("javascript_context_to_first_result", |b| {
        b.to_async(&rt).iter(|| async {
            let ctx = engine
                .create_context(options(Language::JavaScript))
                .await
                .unwrap();
            assert_eq!(ctx.execute("1+1").await.unwrap().text(), Some("2"));
        })
    });
    group.finish();
}

fn execute_warm(c: &mut Criterion) {
    let (rt, engine) = (
        runtime(),
        Engine::builder().max_contexts(64).build().unwrap(),
    );
    let js = rt
        .block_on(engine.create_context(options(Language::JavaScript)))
        .unwrap();
    let ts = rt
        .block_on(engine.create_context(options(Language::TypeScript)))
        .unwrap();
    rt.block_on(js.execute("let x = 1")).unwrap();
    let mut group = c.benchmark_group("execute_warm");
    group.bench_function("javascript_tiny", |b| {
        b.to_async(&rt)
            .iter(|| async { js.execute("x + 1").await.unwrap() })
    });
    group.bench_function("typescript_tiny", |b| {
        b.to_async(&rt)
            .iter(|| async { ts.execute("const y: number = 1; y + 1").await.unwrap() })
    });
    group.finish();
}

/// A 200-line TypeScript file: interfaces, enums, generics, classes.
fn typescript_source() -> String {
    let mut source = String::new();
    for i in 0..20 {
        source.push_str(&format!(
            "enum Kind{i} {{ A, B, C }}\ninterface Item{i}<T> {{ id: number; value: T; kind: Kind{i} }}\n\
             class Store{i}<T> {{\n  private items: Item{i}<T>[] = [];\n  add(item: Item{i}<T>): void {{ this.items.push(item); }}\n\
             \x20 find(id: number): Item{i}<T> | undefined {{ return this.items.find((x) => x.id === id); }}\n}}\n\
             const s{i} = new Store{i}<string>();\ns{i}.add({{ id: {i}, value: 'v', kind: Kind{i}.B }} as Item{i}<string>);\n\
             const total{i}: number = [1, 2, 3].reduce((a: number, b: number) => a + b, 0);\n"
        ));
    }
    source
}

fn transform(c: &mut Criterion) {
    let source = typescript_source();
    assert!(source.lines().count() >= 200);
    let mut group = c.benchmark_group("transform");
    group.bench_function("typescript_200_lines", |b| {
        b.iter(|| codebox::prepare_cell(&source, true).unwrap())
    });
    group.finish();
}

criterion_group!(benches, create, execute_warm, transform);
criterion_main!(benches);
