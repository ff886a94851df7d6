use codebox::{ContextOptions, Engine};
use std::time::Instant;
#[tokio::main]
async fn main() {
    let engine = Engine::builder().build().unwrap();
    for _ in 0..5 {
        let t = Instant::now();
        let ctx = engine
            .create_context(ContextOptions::default())
            .await
            .unwrap();
        let created = t.elapsed();
        let run = ctx.execute("1+1").await.unwrap();
        println!(
            "create {:?} first {:?} total {:?} {:?}",
            created,
            run.duration,
            t.elapsed(),
            run.text()
        );
    }
    let ctx = engine
        .create_context(ContextOptions::default())
        .await
        .unwrap();
    for code in ["pass", "x = 1", "1+1", "x = 1\nx + 1"] {
        let t = Instant::now();
        for _ in 0..1000 {
            ctx.execute(code).await.unwrap();
        }
        println!("warm {code:?} {:?}", t.elapsed() / 1000);
    }
}
