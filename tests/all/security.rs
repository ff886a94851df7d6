use codebox::{ContextOptions, Error};

use crate::common::{context, engine, ok};

#[tokio::test]
async fn the_guest_cannot_see_the_host() {
    let ctx = context().await;
    let run = ctx.execute("open('/etc/passwd').read()").await.unwrap();
    assert_eq!(run.error.unwrap().name, "FileNotFoundError");
    let run = ctx.execute("import os\nos.listdir('/')").await.unwrap();
    assert!(
        run.error.is_some(),
        "listing / must fail, got {:?}",
        run.text()
    );
    let run = ctx
        .execute("open('../../etc/passwd').read()")
        .await
        .unwrap();
    assert!(run.error.is_some());
    let run = ctx
        .execute("import os\nos.listdir('/usr/local/lib')")
        .await
        .unwrap();
    assert_eq!(
        run.text(),
        Some("['python315.zip']"),
        "only the runtime is visible there"
    );
    let run = ctx
        .execute("open('/usr/local/lib/python315.zip', 'ab')")
        .await
        .unwrap();
    assert!(run.error.is_some(), "the runtime is read-only");
    // Only the variables codebox sets.
    let run = ok(&ctx, "import os\nsorted(os.environ)").await;
    assert_eq!(
        run.text(),
        Some("['HOME', 'MPLBACKEND', 'MPLCONFIGDIR', 'PYTHONTZPATH', 'TMPDIR']")
    );
}

#[tokio::test]
async fn sockets_do_not_work() {
    let ctx = context().await;
    let run = ctx
        .execute("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 80))")
        .await
        .unwrap();
    assert!(run.error.is_some());
    let run = ctx
        .execute("import urllib.request\nurllib.request.urlopen('http://127.0.0.1/')")
        .await
        .unwrap();
    assert!(run.error.is_some());
}

#[tokio::test]
async fn symlinks_made_by_the_guest_do_not_lead_out() {
    let ctx = context().await;
    let run = ctx
        .execute("import os\nos.symlink('/etc/passwd', 'p')\nopen('p').read()")
        .await
        .unwrap();
    assert!(run.error.is_some(), "{:?}", run.text());
    assert!(ctx.files().read("p").is_err());
}

#[tokio::test]
async fn host_file_api_rejects_escaping_paths() {
    let ctx = context().await;
    for path in [
        "../secret",
        "/etc/passwd",
        "a/../../b",
        "a\0b",
        "/home/userx/a",
        "/home/user",
    ] {
        let err = ctx.files().write(path, b"x").unwrap_err();
        assert!(matches!(err, Error::InvalidPath { .. }), "{path:?}: {err}");
        assert!(ctx.files().read(path).is_err(), "{path:?}");
    }
    assert!(matches!(
        ctx.files().read("missing.txt"),
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn contexts_do_not_share_variables_or_files() {
    let a = context().await;
    let b = context().await;
    ok(&a, "secret = 42\nopen('mine.txt', 'w').write('a')").await;
    assert_eq!(
        b.execute("secret").await.unwrap().error.unwrap().name,
        "NameError"
    );
    let run = b.execute("open('mine.txt').read()").await.unwrap();
    assert_eq!(run.error.unwrap().name, "FileNotFoundError");
    ok(&a, "open('/tmp/t', 'w').write('t')").await;
    assert!(
        b.execute("open('/tmp/t').read()")
            .await
            .unwrap()
            .error
            .is_some()
    );
}

#[tokio::test]
async fn contexts_given_one_home_share_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = codebox::HomeDir::new(dir.path(), 1 << 30).unwrap();
    let a = engine()
        .create_context(ContextOptions::new().home(home.clone()))
        .await
        .unwrap();
    let b = engine()
        .create_context(ContextOptions::new().home(home))
        .await
        .unwrap();
    ok(&a, "open('shared.txt', 'w').write('hi')").await;
    assert_eq!(
        ok(&b, "open('shared.txt').read()").await.text(),
        Some("'hi'")
    );
}

#[tokio::test]
async fn environment_variables_reach_the_guest() {
    let options = ContextOptions::new()
        .env("API_MODE", "test")
        .env("EMPTY", "");
    let ctx = engine().create_context(options).await.unwrap();
    assert_eq!(
        ok(&ctx, "import os\nos.environ['API_MODE']").await.text(),
        Some("'test'")
    );
    let bad = ContextOptions::new().env("A=B", "x");
    assert!(matches!(
        engine().create_context(bad).await,
        Err(Error::InvalidInput(_))
    ));
}
