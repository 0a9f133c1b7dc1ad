//! Reading a metrics endpoint in tests: a plain HTTP/1.0 GET, and Prometheus' own tools
//! (`promtool`, `prometheus`, Debian's `prometheus` package), skipped with a message where
//! they are not installed — unless `CI` is set, where a missing tool fails the test.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An HTTP response, as [`http_get`] read it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, as text.
    pub body: String,
}

/// `GET path` on `addr` over HTTP/1.0 (the server closes the connection after the
/// response, so its end is the body's end).
///
/// # Panics
/// When the server cannot be reached or answers something that is not HTTP.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("the request is sent");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("the response is read");
    let response = String::from_utf8(response).expect("a text response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let content_type = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    HttpResponse {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// The text of `GET /metrics` on `addr`, asserting a 200 in the text format 0.0.4.
///
/// # Panics
/// When the endpoint does not answer so.
pub async fn scrape(addr: SocketAddr) -> String {
    let response = http_get(addr, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.content_type.as_deref(),
        Some("text/plain; version=0.0.4")
    );
    response.body
}

/// The value of `series` in `text` (the text format): `series` is the name with its
/// labels as the format writes them, sorted by label name, e.g.
/// `grpc_server_started_total{grpc_method="Login",grpc_service="trellis.auth.v1.AuthService",grpc_type="unary"}`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The installed tool `name` from Debian's `prometheus` package, as
/// [`super::installed_tool`] finds it.
///
/// # Panics
/// When it is not installed and `CI` is set: CI must run every test.
pub fn installed_tool(name: &str) -> Option<PathBuf> {
    super::installed_tool(name, "prometheus")
}

/// Runs `promtool check metrics` on `text` and asserts it exits 0 and prints nothing
/// (no lint warning); skipped as [`installed_tool`] says.
///
/// # Panics
/// When promtool reports anything.
pub fn assert_promtool_accepts(text: &str) {
    let Some(promtool) = installed_tool("promtool") else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("a pipe")
        .write_all(text.as_bytes())
        .expect("the metrics are passed");
    let output = child.wait_with_output().expect("promtool ends");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics: {}\n{report}\n--- the metrics:\n{text}",
        output.status
    );
}
