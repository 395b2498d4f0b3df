//! A fake of Anthropic's Messages API, good enough for the real Claude Code
//! CLI: tests point `ANTHROPIC_BASE_URL` at it and script what "the model"
//! answers.
//!
//! It listens on one address over plain HTTP/1.1 and records every request
//! (method, path and query, headers, JSON body), known or not. It answers
//!
//! - `POST /v1/messages` (the CLI adds `?beta=true`): a message made by the
//!   [`Script`], streamed as server-sent events when the body says
//!   `"stream": true` (what the CLI asks for), else one JSON message;
//! - `POST /v1/messages/count_tokens`: a token count;
//! - `HEAD`/`GET /api/hello` (the CLI's connectivity check when nonessential
//!   traffic is not disabled): 200;
//! - anything else: 404 with an API-style error body.
//!
//! Claude Code 2.1.332 run with `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`
//! sends nothing but `POST /v1/messages?beta=true`: one request per model
//! turn, the key in `x-api-key`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A review the fake model gives, recognisable in summaries and comments.
pub const REVIEW_REPLY: &str = "Fake model review: the change looks right to me. (berth-fake-model)";

/// What the fake model says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Always this text, ending the turn.
    Reply(String),
    /// First a `Write` tool call creating `path` with `content`; once the
    /// request's last message carries a `tool_result`, the text `reply`.
    ///
    /// A relative `path` is taken from the working directory the CLI names in
    /// its system prompt ("Primary working directory: ...").
    WriteThenReply {
        /// The file to write, absolute or relative to the agent's working directory.
        path: String,
        /// What to write into it.
        content: String,
        /// The final answer once the tool ran.
        reply: String,
    },
    /// A text containing the `x-api-key` it got (else the `authorization`
    /// header), for tests that check secrets are redacted downstream.
    EchoKey,
}

impl Script {
    /// [`Script::Reply`] with [`REVIEW_REPLY`].
    pub fn review() -> Self {
        Self::Reply(REVIEW_REPLY.to_owned())
    }
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path with its query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Every header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as JSON; `Null` when empty, a JSON string when not JSON.
    pub body: Value,
    /// When the fake received it (its whole body read), on this host's clock.
    pub received: std::time::SystemTime,
}

impl RecordedRequest {
    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// Whether this is a model turn: `POST /v1/messages`, with or without a query.
    pub fn is_message(&self) -> bool {
        let path = self.path.split('?').next().unwrap_or_default();
        self.method == "POST" && path == "/v1/messages"
    }
}

struct Shared {
    script: Script,
    requests: Mutex<Vec<RecordedRequest>>,
    sequence: AtomicU64,
}

/// A running fake Messages API, stopped when dropped.
pub struct FakeModel {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeModel {
    /// Starts a fake answering [`Script::review`] on a free port of `host`.
    pub async fn start(host: IpAddr) -> FakeModel {
        FakeModel::start_with(host, Script::review()).await
    }

    /// Starts a fake following `script` on a free port of `host` (the Docker
    /// bridge gateway, for agents in containers on the default bridge).
    pub async fn start_with(host: IpAddr, script: Script) -> FakeModel {
        let listener = tokio::net::TcpListener::bind((host, 0))
            .await
            .unwrap_or_else(|err| panic!("the fake model cannot listen on {host}: {err}"));
        let addr = listener.local_addr().expect("a bound listener has an address");
        let shared =
            Arc::new(Shared { script, requests: Mutex::new(Vec::new()), sequence: AtomicU64::new(0) });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeModel { addr, shared, server }
    }

    /// `http://host:port`, for `ANTHROPIC_BASE_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().expect("the request log is never poisoned").clone()
    }

    /// The model turns so far: `POST /v1/messages` (any query).
    pub fn message_requests(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(RecordedRequest::is_message).collect()
    }

    /// Every string in every recorded body, one per line: to check that the
    /// prompt (or anything else) reached the model.
    pub fn all_text(&self) -> String {
        let mut out = String::new();
        for request in self.requests() {
            for_each_string(&request.body, &mut |text| {
                out.push_str(text);
                out.push('\n');
            });
        }
        out
    }

    /// `METHOD path` of every request so far, for failure messages.
    pub fn summary(&self) -> String {
        self.requests().iter().map(|request| format!("{} {}\n", request.method, request.path)).collect()
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = std::time::SystemTime::now();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let request = RecordedRequest {
        method: method.to_string(),
        path: uri.path_and_query().map_or_else(|| uri.path().to_owned(), ToString::to_string),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
            })
            .collect(),
        body,
        received,
    };
    shared.requests.lock().expect("the request log is never poisoned").push(request.clone());
    let n = shared.sequence.fetch_add(1, Ordering::Relaxed);
    match (request.method.as_str(), uri.path()) {
        ("POST", "/v1/messages") => message(&shared.script, &request, n),
        ("POST", "/v1/messages/count_tokens") => {
            let tokens = request.body.to_string().len() / 4;
            axum::Json(json!({ "input_tokens": tokens })).into_response()
        }
        ("HEAD" | "GET", "/api/hello") => StatusCode::OK.into_response(),
        (method, path) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "type": "error",
                "error": {
                    "type": "not_found_error",
                    "message": format!("the fake model has no {method} {path}"),
                },
            })),
        )
            .into_response(),
    }
}

/// One content block of an answer.
enum Block {
    Text(String),
    ToolUse { id: String, name: &'static str, input: Value },
}

/// Answers one model turn as the script says.
fn message(script: &Script, request: &RecordedRequest, n: u64) -> Response {
    let (blocks, stop_reason) = match script {
        Script::Reply(text) => (vec![Block::Text(text.clone())], "end_turn"),
        Script::EchoKey => {
            let key = request.header("x-api-key").or_else(|| request.header("authorization")).unwrap_or("");
            (vec![Block::Text(format!("Fake model: the key I was given is {key}"))], "end_turn")
        }
        Script::WriteThenReply { reply, .. } if last_message_has_tool_result(&request.body) => {
            (vec![Block::Text(reply.clone())], "end_turn")
        }
        Script::WriteThenReply { path, content, .. } => match absolute_path(path, &request.body) {
            Some(file_path) => {
                let input = json!({ "file_path": file_path, "content": content });
                (vec![Block::ToolUse { id: format!("toolu_fake_{n}"), name: "Write", input }], "tool_use")
            }
            None => (
                vec![Block::Text(format!(
                    "Fake model: no \"Primary working directory\" in the request to resolve {path} against"
                ))],
                "end_turn",
            ),
        },
    };
    let model = request.body.get("model").and_then(Value::as_str).unwrap_or("claude-fake").to_owned();
    let id = format!("msg_fake_{n}");
    let output_tokens = 16;
    if request.body.get("stream").and_then(Value::as_bool) == Some(true) {
        let events = stream_events(&id, &model, &blocks, stop_reason, output_tokens);
        ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], events)
            .into_response()
    } else {
        let content: Vec<Value> = blocks.iter().map(block_json).collect();
        axum::Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage(output_tokens),
        }))
        .into_response()
    }
}

fn usage(output_tokens: u64) -> Value {
    json!({
        "input_tokens": 100,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

fn block_json(block: &Block) -> Value {
    match block {
        Block::Text(text) => json!({ "type": "text", "text": text }),
        Block::ToolUse { id, name, input } => {
            json!({ "type": "tool_use", "id": id, "name": name, "input": input })
        }
    }
}

/// The server-sent events of a streamed message, as the Messages API sends them.
fn stream_events(id: &str, model: &str, blocks: &[Block], stop_reason: &str, output_tokens: u64) -> String {
    let mut out = String::new();
    let mut event = |name: &str, data: Value| out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    event(
        "message_start",
        json!({
            "type": "message_start",
            "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage(1),
            },
        }),
    );
    for (index, block) in blocks.iter().enumerate() {
        let (start, delta) = match block {
            Block::Text(text) => {
                (json!({ "type": "text", "text": "" }), json!({ "type": "text_delta", "text": text }))
            }
            Block::ToolUse { id, name, input } => (
                json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                json!({ "type": "input_json_delta", "partial_json": input.to_string() }),
            ),
        };
        event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": start }),
        );
        event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        );
        event("content_block_stop", json!({ "type": "content_block_stop", "index": index }));
    }
    event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason, "stop_sequence": null },
            "usage": { "output_tokens": output_tokens },
        }),
    );
    event("message_stop", json!({ "type": "message_stop" }));
    out
}

/// Whether the last message's content holds a `tool_result` block.
fn last_message_has_tool_result(body: &Value) -> bool {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| messages.last())
        .and_then(|message| message.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|content| content.iter().any(|block| block["type"] == "tool_result"))
}

/// `path` if absolute, else joined to the working directory the request names.
fn absolute_path(path: &str, body: &Value) -> Option<String> {
    if path.starts_with('/') {
        return Some(path.to_owned());
    }
    let mut found = None;
    for_each_string(body, &mut |text| {
        if found.is_none() {
            found = working_directory(text);
        }
    });
    found.map(|dir| format!("{}/{path}", dir.trim_end_matches('/')))
}

/// The directory in a "Primary working directory: <dir>" line of `text`.
fn working_directory(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("Primary working directory: ")?;
    let dir = rest.lines().next()?.trim();
    dir.starts_with('/').then(|| dir.to_owned())
}

fn for_each_string(value: &Value, visit: &mut impl FnMut(&str)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter().for_each(|item| for_each_string(item, visit)),
        Value::Object(fields) => fields.values().for_each(|field| for_each_string(field, visit)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}
