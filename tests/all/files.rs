use codebox::FileKind;

use crate::common::{context, ok};

#[tokio::test]
async fn host_file_api_round_trip() {
    let ctx = context().await;
    let files = ctx.files();
    files.make_dir("a/b").unwrap();
    files.write("a/b/c.txt", b"one").unwrap();
    files.write("/home/user/top.bin", &[0, 1, 2]).unwrap();
    let root = files.list("").unwrap();
    let kinds: Vec<_> = root.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(kinds, [("a", FileKind::Dir), ("top.bin", FileKind::File)]);
    assert_eq!(root[1].size, 3);
    assert!(root[1].modified.is_some());
    assert_eq!(
        ok(&ctx, "open('a/b/c.txt').read()").await.text(),
        Some("'one'")
    );
    files.rename("a/b/c.txt", "moved.txt").unwrap();
    assert_eq!(files.read("moved.txt").unwrap(), b"one");
    files.remove("a").unwrap();
    assert!(!files.exists("a").unwrap());
    assert!(files.list("missing").is_err());
    assert!(files.read("").is_err());
}
