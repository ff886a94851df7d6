use base64::Engine as _;
use codebox::ErrorKind;

use crate::common::{context, ok};

fn png_size(b64: &str) -> (u32, u32) {
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("valid base64");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test]
async fn a_dataframe_result_has_html_text_and_columns() {
    let ctx = context().await;
    let run = ok(
        &ctx,
        "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'sales': [3.5, 5]})",
    )
    .await;
    let result = &run.results[0];
    assert!(result.is_main_result);
    assert!(
        result.data["text/html"]
            .as_str()
            .unwrap()
            .contains("<table")
    );
    assert!(result.text().unwrap().contains("Oslo"));
    assert_eq!(
        result.data["codebox/data"],
        serde_json::json!({"city": ["Oslo", "Lima"], "sales": [3.5, 5.0]})
    );
}

#[tokio::test]
async fn a_line_plot_becomes_a_png_of_the_figure_size_with_chart_data() {
    let ctx = context().await;
    let run = ok(
        &ctx,
        "import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(4, 3), dpi=50)\n\
         plt.plot([1, 2, 3], [2, 4, 8], label='growth')\nplt.title('Growth')\nplt.xlabel('day')\n\
         plt.ylabel('users')\nplt.show()",
    )
    .await;
    assert_eq!(run.results.len(), 1, "{:?}", run.results);
    let figure = &run.results[0];
    assert!(!figure.is_main_result);
    assert_eq!(
        png_size(figure.data["image/png"].as_str().unwrap()),
        (200, 150)
    );
    let chart = &figure.data["codebox/chart"];
    assert_eq!(chart["type"], "line");
    assert_eq!(chart["title"], "Growth");
    assert_eq!(chart["x_label"], "day");
    assert_eq!(chart["y_label"], "users");
    assert_eq!(chart["elements"][0]["label"], "growth");
    assert_eq!(
        chart["elements"][0]["points"],
        serde_json::json!([[1.0, 2.0], [2.0, 4.0], [3.0, 8.0]])
    );
    assert!(run.stderr.is_empty(), "no backend warnings: {}", run.stderr);
    // The figure was closed when shown: the next cell does not repeat it.
    assert!(ok(&ctx, "1").await.results.iter().all(|r| r.is_main_result));
}

#[tokio::test]
async fn figures_left_open_are_shown_at_the_end_and_bar_and_pie_charts_carry_values() {
    let ctx = context().await;
    let run = ok(
        &ctx,
        "import matplotlib.pyplot as plt\nplt.bar(['a', 'b', 'c'], [3, 1, 2])\nplt.figure()\n\
         plt.pie([1, 3], labels=['x', 'y'])\nplt.figure()\nplt.scatter([1, 2], [3, 4])\nNone",
    )
    .await;
    let charts: Vec<_> = run
        .results
        .iter()
        .map(|r| &r.data["codebox/chart"])
        .collect();
    assert_eq!(charts.len(), 3);
    assert_eq!(charts[0]["type"], "bar");
    let bars: Vec<_> = charts[0]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["label"].clone(), e["value"].clone()))
        .collect();
    assert_eq!(
        bars,
        [
            ("a".into(), 3.0.into()),
            ("b".into(), 1.0.into()),
            ("c".into(), 2.0.into())
        ]
    );
    assert_eq!(charts[1]["type"], "pie");
    assert_eq!(charts[1]["elements"][1]["label"], "y");
    assert_eq!(charts[1]["elements"][1]["angle"], 270.0);
    assert_eq!(charts[2]["type"], "scatter");
    assert_eq!(
        charts[2]["elements"][0]["points"],
        serde_json::json!([[1.0, 3.0], [2.0, 4.0]])
    );
}

#[tokio::test]
async fn display_calls_and_the_final_value_come_in_order() {
    let ctx = context().await;
    let run = ok(
        &ctx,
        "display('first')\nfrom IPython.display import HTML, Markdown\ndisplay(HTML('<b>2</b>'), Markdown('*3*'))\n'last'",
    )
    .await;
    let summary: Vec<_> = run
        .results
        .iter()
        .map(|r| {
            (
                r.is_main_result,
                r.data.keys().cloned().collect::<Vec<_>>().join(","),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (false, "text/plain".to_string()),
            (false, "text/html,text/plain".to_string()),
            (false, "text/markdown,text/plain".to_string()),
            (true, "text/plain".to_string()),
        ]
    );
    assert_eq!(run.results[0].text(), Some("'first'"));
    assert_eq!(run.results[1].data["text/html"], "<b>2</b>");
    assert_eq!(run.text(), Some("'last'"));
}

#[tokio::test]
async fn the_display_protocol_is_honoured() {
    let ctx = context().await;
    let run = ok(
        &ctx,
        "class Rich:\n    def _repr_html_(self): return '<i>r</i>'\n    def _repr_json_(self): return {'a': 1}\n\
         \n    def _repr_png_(self): return b'\\x89PNG'\n    def _repr_latex_(self): return None\n\
         \n    def __repr__(self): return 'Rich()'\nRich()",
    )
    .await;
    let data = &run.results[0].data;
    assert_eq!(data["text/html"], "<i>r</i>");
    assert_eq!(data["application/json"], serde_json::json!({"a": 1}));
    assert_eq!(data["image/png"], "iVBORw==");
    assert!(!data.contains_key("text/latex"), "None means absent");
    assert_eq!(data["text/plain"], "Rich()");
}

#[tokio::test]
async fn oversized_or_malformed_reports_are_refused_and_the_host_stays_healthy() {
    let ctx = context().await;
    let run = ctx
        .execute("import _host\n_host.call(b'{\"op\":\"result\",\"data\":{\"text/plain\":\"' + b'x' * (40 * 1024 * 1024) + b'\"}}')")
        .await
        .unwrap();
    assert_eq!(
        run.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::InvalidResult),
        "{:?}",
        run.error
    );
    assert!(run.results.is_empty());
    let run = ctx
        .execute("import _host\n_host.call(b'not json at all')")
        .await
        .unwrap();
    assert_eq!(run.error.map(|e| e.kind), Some(ErrorKind::InvalidResult));
    // A huge HTML repr is dropped but the value still shows as text.
    let run = ok(
        &ctx,
        "class Big:\n    def _repr_html_(self): return 'x' * (20 * 1024 * 1024)\nBig()",
    )
    .await;
    assert!(!run.results[0].data.contains_key("text/html"));
    assert!(run.text().is_some());
    assert_eq!(ok(&ctx, "'still fine'").await.text(), Some("'still fine'"));
}
