//! The OpenAPI 3 description of the native API, served at `/openapi.json`. It is written by
//! hand, next to the wire structs it describes (`wire.rs`); the router tests check the
//! shapes it names.

use codebox::Language;
use serde_json::{Value, json};

fn error_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
        "429": {"$ref": "#/components/responses/Error"}
    })
}

fn op(summary: &str, body: Option<Value>, ok: Value) -> Value {
    let mut responses = error_responses();
    responses["200"] = ok;
    let mut operation = json!({"summary": summary, "responses": responses});
    if let Some(schema) = body {
        operation["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    operation
}

fn ok_json(schema: Value) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
}

fn no_content() -> Value {
    json!({"description": "Done"})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn id_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn path_query(required: bool) -> Value {
    json!({"name": "path", "in": "query", "required": required, "schema": {"type": "string"},
           "description": "A path under /home/user, absolute or relative to it"})
}

/// The languages' names, as contexts report them.
fn languages() -> Vec<&'static str> {
    Language::ALL.map(Language::name).to_vec()
}

/// The programs `processes` emulates.
fn commands() -> Vec<&'static str> {
    Language::ALL
        .iter()
        .flat_map(|l| l.commands().iter().copied())
        .collect()
}

pub(crate) fn document() -> Value {
    let description = format!(
        "Run code in sandboxes ({}). Every route but /health and /openapi.json needs \
         `Authorization: Bearer KEY`. Errors are `{{\"error\": code, \"message\": sentence}}`. \
         Field names are camelCase; an Execution is the engine's own serialisation of an \
         execution (`codebox::Execution`, the same object `codebox run --json` prints, \
         durations in milliseconds as `durationMs`) plus `contextId`, and a stream's `end` \
         event carries its accounting fields under the same names. E2B clients use the prefix \
         /e2b/{{accessToken}} (see `e2bPath`).",
        Language::list()
    );
    let language_input = json!({"type": "string", "description": format!(
        "One of {} or an alias (js, ts, ...), any case; default python", Language::list())});
    let sandbox = id_param("id");
    let context = id_param("cid");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "codebox",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": reference("Error")}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"}}},
                "Sandbox": {"type": "object", "properties": {
                    "sandboxID": {"type": "string"}, "startedAt": {"type": "string", "format": "date-time"},
                    "endAt": {"type": "string", "format": "date-time"},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "envVars": {"type": "object", "additionalProperties": {"type": "string"}},
                    "template": {"type": "string"},
                    "contexts": {"type": "integer"}, "e2bPath": {"type": "string"}}},
                "CreateSandbox": {"type": "object", "additionalProperties": false, "properties": {
                    "timeout": {"type": "integer", "description": "Lifetime in seconds (default 300, max 3600)"},
                    "envVars": {"type": "object", "additionalProperties": {"type": "string"}},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "template": {"type": "string", "description": "Template for the sandbox's Python contexts: `data` (numpy, pandas, matplotlib imported), `stdlib`, or a custom one. Default: `data` once built, else `stdlib`"}}},
                "Context": {"type": "object", "properties": {
                    "id": {"type": "string"}, "language": {"type": "string", "enum": languages()}, "cwd": {"type": "string"},
                    "template": {"type": "string", "description": "Python: the template it started from"}}},
                "CreateContext": {"type": "object", "additionalProperties": false, "properties": {
                    "language": language_input.clone(), "cwd": {"type": "string"},
                    "template": {"type": "string", "description": "Python only; overrides the sandbox's template"}}},
                "Execute": {"type": "object", "required": ["code"], "additionalProperties": false, "properties": {
                    "code": {"type": "string"}, "language": language_input, "contextId": {"type": "string"},
                    "envVars": {"type": "object", "additionalProperties": {"type": "string"}},
                    "timeout": {"type": "number", "description": "Seconds"}}},
                "Execution": {"type": "object", "description": "codebox::Execution as the engine serialises it, plus contextId", "properties": {
                    "contextId": {"type": "string"}, "stdout": {"type": "string"}, "stderr": {"type": "string"},
                    "results": {"type": "array", "items": {"type": "object", "properties": {
                        "isMainResult": {"type": "boolean"}, "data": {"type": "object"}}}},
                    "error": {"type": "object", "nullable": true, "properties": {
                        "kind": {"type": "string"}, "name": {"type": "string"}, "value": {"type": "string"}, "traceback": {"type": "string"}}},
                    "executionCount": {"type": "integer"}, "durationMs": {"type": "number", "description": "Wall-clock milliseconds"},
                    "fuelConsumed": {"type": "integer", "nullable": true, "description": "Fuel burned, when the server meters fuel"},
                    "stdoutTruncated": {"type": "boolean"}, "stderrTruncated": {"type": "boolean"},
                    "exitStatus": {"type": "integer", "nullable": true}, "contextRestarted": {"type": "boolean"}}},
                "FileEntry": {"type": "object", "properties": {
                    "name": {"type": "string"}, "path": {"type": "string"}, "kind": {"type": "string", "enum": ["file", "dir", "symlink"]},
                    "size": {"type": "integer"}, "modified": {"type": "integer", "nullable": true}}},
                "Process": {"type": "object", "required": ["cmd"], "additionalProperties": false, "properties": {
                    "cmd": {"type": "string", "enum": commands()}, "args": {"type": "array", "items": {"type": "string"}},
                    "timeout": {"type": "number"}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "OK"}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics: executions by outcome, execution duration histogram, HTTP responses by status class, live sandboxes and contexts, resident memory",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }},
            "/sandboxes": {
                "post": op("Create a sandbox", Some(reference("CreateSandbox")), ok_json(reference("Sandbox"))),
                "get": op("List your sandboxes", None, ok_json(json!({"type": "array", "items": reference("Sandbox")})))
            },
            "/sandboxes/{id}": {
                "parameters": [sandbox],
                "get": op("Describe a sandbox", None, ok_json(reference("Sandbox"))),
                "delete": op("Kill a sandbox", None, no_content())
            },
            "/sandboxes/{id}/timeout": {
                "parameters": [sandbox],
                "post": op("Set the remaining lifetime", Some(json!({"type": "object", "required": ["timeout"], "properties": {"timeout": {"type": "integer"}}})), ok_json(reference("Sandbox")))
            },
            "/sandboxes/{id}/contexts": {
                "parameters": [sandbox],
                "post": op("Create a context", Some(reference("CreateContext")), ok_json(reference("Context"))),
                "get": op("List contexts", None, ok_json(json!({"type": "array", "items": reference("Context")})))
            },
            "/sandboxes/{id}/contexts/{cid}": {"parameters": [sandbox, context], "delete": op("Delete a context", None, no_content())},
            "/sandboxes/{id}/contexts/{cid}/restart": {"parameters": [sandbox, context], "post": op("Restart a context", None, ok_json(reference("Context")))},
            "/sandboxes/{id}/execute": {
                "parameters": [sandbox],
                "post": {
                    "summary": "Run code. Streams NDJSON events (stdout, stderr, result, error, keepalive, end); with `Accept: application/json` answers one Execution object.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": reference("Execute")}}},
                    "responses": {
                        "200": {"description": "The execution", "content": {
                            "application/x-ndjson": {"schema": {"type": "string"}},
                            "application/json": {"schema": reference("Execution")}}},
                        "400": {"$ref": "#/components/responses/Error"}, "401": {"$ref": "#/components/responses/Error"},
                        "404": {"$ref": "#/components/responses/Error"},
                        "410": {"description": "The sandbox was killed while the code ran (a stream ends with a `sandbox_killed` error event instead)", "content": {"application/json": {"schema": reference("Error")}}}}
                }
            },
            "/sandboxes/{id}/files": {
                "parameters": [sandbox],
                "get": {"summary": "Download a file", "parameters": [path_query(true)], "responses": {"200": {"description": "The bytes", "content": {"application/octet-stream": {}}}, "404": {"$ref": "#/components/responses/Error"}}},
                "put": {"summary": "Upload a file (raw body)", "parameters": [path_query(true)], "requestBody": {"content": {"application/octet-stream": {}}}, "responses": {"200": {"description": "Written"}, "413": {"$ref": "#/components/responses/Error"}, "507": {"$ref": "#/components/responses/Error"}}},
                "post": {"summary": "Upload files (multipart `file` parts, or a raw body with ?path=)", "parameters": [path_query(false)], "requestBody": {"content": {"multipart/form-data": {}, "application/octet-stream": {}}}, "responses": {"200": {"description": "Written"}, "413": {"$ref": "#/components/responses/Error"}, "507": {"$ref": "#/components/responses/Error"}}},
                "delete": {"summary": "Remove a file or directory", "parameters": [path_query(true)], "responses": {"204": {"description": "Removed"}, "404": {"$ref": "#/components/responses/Error"}}}
            },
            "/sandboxes/{id}/files/list": {"parameters": [sandbox], "get": {"summary": "List a directory", "parameters": [path_query(false)], "responses": {"200": ok_json(json!({"type": "array", "items": reference("FileEntry")}))}}},
            "/sandboxes/{id}/files/mkdir": {"parameters": [sandbox], "post": op("Make a directory", Some(json!({"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}})), no_content())},
            "/sandboxes/{id}/files/move": {"parameters": [sandbox], "post": op("Move a file or directory", Some(json!({"type": "object", "required": ["from", "to"], "properties": {"from": {"type": "string"}, "to": {"type": "string"}}})), no_content())},
            "/sandboxes/{id}/processes": {"parameters": [sandbox], "post": op("Run python3 -c CODE, node -e CODE, or a script", Some(reference("Process")), ok_json(json!({"type": "object", "properties": {"stdout": {"type": "string"}, "stderr": {"type": "string"}, "exitCode": {"type": "integer"}}})))}
        }
    })
}
