//! Embed codebox in a Rust program: upload a CSV, query it with pandas, read the result.
//!
//! Run: `cargo run --example embed`

use codebox::{ContextOptions, Engine, Limits};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Built once per process; the first build installs and compiles the runtime (one time).
    let engine = tokio::task::spawn_blocking(Engine::new).await??;
    let options = ContextOptions::new().limits(Limits::default());
    let ctx = engine.create_context(options).await?;

    ctx.files()
        .write("sales.csv", include_bytes!("sales.csv"))?;
    ctx.execute("import pandas as pd\ndf = pd.read_csv('sales.csv')")
        .await?;
    let run = ctx
        .execute("df.groupby('city').sales.sum().nlargest(5)")
        .await?;

    match &run.error {
        None => println!("{}", run.text().unwrap_or("(no result)")),
        Some(error) => eprintln!("the code failed:\n{error}"),
    }
    Ok(())
}
