//! E2B's JSON, serde-derived: the code interpreter's streamed events (snake_case, a result's
//! MIME bundle spread over E2B's named fields), its contexts, and envd's file entries.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use codebox::{DisplayData, FileEntry, FileKind};
use serde::Serialize;
use serde_json::Value;

use crate::sandbox::ContextEntry;
use crate::util::rfc3339;

/// A streamed event after the output.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event<'a> {
    NumberOfExecutions {
        execution_count: u64,
    },
    Result(ResultEvent<'a>),
    /// `name` and `value` of the exception, or an error code and its sentence when the
    /// execution could not run to its end.
    Error {
        name: &'a str,
        value: Cow<'a, str>,
        traceback: &'a str,
    },
    /// Always last.
    EndOfExecution,
}

/// A MIME bundle in E2B's result shape: well-known types get their own fields, codebox's
/// `data` and `chart` map to E2B's, anything else goes to `extra`.
#[derive(Serialize, Default)]
pub(crate) struct ResultEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    markdown: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    svg: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    png: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jpeg: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pdf: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latex: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    javascript: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chart: Option<&'a Value>,
    extra: BTreeMap<&'a str, &'a Value>,
    is_main_result: bool,
}

impl<'a> From<&'a DisplayData> for ResultEvent<'a> {
    fn from(result: &'a DisplayData) -> ResultEvent<'a> {
        let mut out = ResultEvent {
            is_main_result: result.is_main_result,
            ..ResultEvent::default()
        };
        for (mime, value) in &result.data {
            let field = match mime.as_str() {
                "text/plain" => &mut out.text,
                "text/html" => &mut out.html,
                "text/markdown" => &mut out.markdown,
                "image/svg+xml" => &mut out.svg,
                "image/png" => &mut out.png,
                "image/jpeg" => &mut out.jpeg,
                "application/pdf" => &mut out.pdf,
                "text/latex" => &mut out.latex,
                "application/json" => &mut out.json,
                "application/javascript" => &mut out.javascript,
                "codebox/data" => &mut out.data,
                "codebox/chart" => &mut out.chart,
                _ => {
                    out.extra.insert(mime, value);
                    continue;
                }
            };
            *field = Some(value);
        }
        out
    }
}

/// A code context.
#[derive(Serialize)]
pub(crate) struct Context {
    id: String,
    language: &'static str,
    cwd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
}

impl From<&ContextEntry> for Context {
    fn from(c: &ContextEntry) -> Context {
        Context {
            id: c.id.clone(),
            language: c.language.name(),
            cwd: c.cwd.clone(),
            template: c.template().map(str::to_string),
        }
    }
}

/// An empty object, what E2B answers when there is nothing to say.
#[derive(Serialize)]
pub(crate) struct Empty {}

/// A file an upload wrote.
#[derive(Serialize)]
pub(crate) struct WrittenFile {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
}

impl WrittenFile {
    /// `path` as written (absolute, or relative to `/home/user`).
    pub fn new(path: &str) -> WrittenFile {
        let path = absolute(path);
        WrittenFile {
            name: path.rsplit('/').next().unwrap_or("").to_string(),
            kind: "file",
            path,
        }
    }
}

/// `path` made absolute: relative paths are under `/home/user`.
pub(crate) fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", codebox::GUEST_HOME, path)
    }
}

/// An envd filesystem entry (Connect JSON: int64 as a string, camelCase).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntryInfo {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
    size: String,
    mode: u32,
    permissions: &'static str,
    owner: &'static str,
    group: &'static str,
    modified_time: String,
}

impl From<&FileEntry> for EntryInfo {
    fn from(e: &FileEntry) -> EntryInfo {
        let kind = match e.kind {
            FileKind::Dir => "FILE_TYPE_DIRECTORY",
            FileKind::File => "FILE_TYPE_FILE",
            FileKind::Symlink => "FILE_TYPE_SYMLINK",
        };
        let dir = e.kind == FileKind::Dir;
        EntryInfo {
            name: e.name.clone(),
            kind,
            path: e.path.clone(),
            size: e.size.to_string(),
            mode: if dir { 0o755 } else { 0o644 },
            permissions: if dir { "drwxr-xr-x" } else { "-rw-r--r--" },
            owner: "user",
            group: "user",
            modified_time: e
                .modified
                .map(|s| rfc3339(UNIX_EPOCH + Duration::from_secs(s)))
                .unwrap_or_default(),
        }
    }
}

/// `ListDir`'s answer.
#[derive(Serialize)]
pub(crate) struct Entries {
    pub entries: Vec<EntryInfo>,
}

/// The answer of `Stat`, `MakeDir` and `Move`.
#[derive(Serialize)]
pub(crate) struct Entry {
    pub entry: EntryInfo,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_spread_over_e2b_fields_with_the_rest_in_extra() {
        let result = DisplayData {
            data: [
                ("text/plain", json!("42")),
                ("image/png", json!("iVBOR")),
                ("codebox/chart", json!({"type": "line"})),
                ("application/x-custom", json!(1)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            is_main_result: true,
        };
        let event = serde_json::to_value(Event::Result((&result).into())).unwrap();
        assert_eq!(
            event,
            json!({"type": "result", "text": "42", "png": "iVBOR", "chart": {"type": "line"},
                   "extra": {"application/x-custom": 1}, "is_main_result": true})
        );
        let empty = serde_json::to_value(Event::Result((&DisplayData::default()).into()));
        assert_eq!(
            empty.unwrap(),
            json!({"type": "result", "extra": {}, "is_main_result": false})
        );
    }
}
