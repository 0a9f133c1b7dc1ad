//! The web page of `up` (`web/`): served on [`WEB_PORT`] of 127.0.0.1 by a small static
//! server on a thread of its own, with `config.json` telling the page each service's
//! port. Files are read on every request, so an edited page shows on reload. The
//! services allow the page's origin ([`allowed_origins`]) and no other.

use std::path::{Path, PathBuf};
use std::thread;

use anyhow::Context as _;

use super::processes::Running;

/// The port the page is served on (next to the services' 50051–50053).
pub(super) const WEB_PORT: u16 = 50050;

/// The page's directory, under the workspace root.
pub(super) const WEB_DIR: &str = "web";

/// What the server serves: URL path, file under [`WEB_DIR`], content type. Nothing else
/// is served (no directory listing, no path from the request reaches the file system).
const FILES: [(&str, &str, &str); 6] = [
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/index.html", "index.html", "text/html; charset=utf-8"),
    ("/app.js", "app.js", "text/javascript; charset=utf-8"),
    ("/feed.js", "feed.js", "text/javascript; charset=utf-8"),
    (
        "/grpc-web.js",
        "grpc-web.js",
        "text/javascript; charset=utf-8",
    ),
    ("/style.css", "style.css", "text/css; charset=utf-8"),
];

/// The page's origins: `localhost` and `127.0.0.1` are two origins to a browser, and
/// the page works from either.
pub(super) fn allowed_origins(port: u16) -> String {
    format!("http://localhost:{port},http://127.0.0.1:{port}")
}

/// The variables that let the page call every service (`server.cors.allowed_origins`),
/// after the origins the developer allowed already (read through `lookup`), e.g. a
/// front-end dev server's.
pub(super) fn cors_environment(
    port: u16,
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    crate::services::SERVICES
        .iter()
        .map(|spec| {
            let key = format!("{}__SERVER__CORS__ALLOWED_ORIGINS", spec.env_prefix);
            let value = match lookup(&key) {
                Some(theirs) => format!("{theirs},{}", allowed_origins(port)),
                None => allowed_origins(port),
            };
            (key, value)
        })
        .collect()
}

/// `config.json`: each service's port (its first replica's).
fn config_json(running: &[Running]) -> String {
    let services: serde_json::Map<String, serde_json::Value> = crate::services::SERVICES
        .iter()
        .filter_map(|spec| {
            running
                .iter()
                .find(|service| service.replica.spec == spec)
                .map(|service| (spec.name.to_owned(), service.replica.port.into()))
        })
        .collect();
    serde_json::json!({ "services": services }).to_string()
}

/// The Content-Security-Policy of every response: the page's own scripts and styles,
/// calls to the services' ports only, nothing inline, nothing from elsewhere.
fn content_security_policy(running: &[Running]) -> String {
    let mut connect = vec!["'self'".to_owned()];
    for service in running {
        for host in ["localhost", "127.0.0.1"] {
            connect.push(format!("http://{host}:{}", service.replica.port));
        }
    }
    format!(
        "default-src 'self'; connect-src {}; img-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        connect.join(" ")
    )
}

/// Starts serving `root`/[`WEB_DIR`] on 127.0.0.1:`port`; the thread ends with the
/// process.
///
/// # Errors
/// When the port cannot be bound (another program has it).
pub(super) fn serve(root: &Path, port: u16, running: &[Running]) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(("127.0.0.1", port))
        .map_err(|err| anyhow::anyhow!("{err}"))
        .with_context(|| format!("serving the web page on 127.0.0.1:{port}"))?;
    let dir = root.join(WEB_DIR);
    let config = config_json(running);
    let csp = content_security_policy(running);
    thread::Builder::new()
        .name("web".to_owned())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = respond(&dir, &config, &csp, request.method(), request.url());
                // A client that went away is not our problem.
                drop(request.respond(response));
            }
        })
        .context("starting the web page's thread")?;
    Ok(())
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| unreachable!("static header names and ASCII values"))
}

fn respond(
    dir: &Path,
    config: &str,
    csp: &str,
    method: &tiny_http::Method,
    url: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let text = |status: u16, body: &str| {
        tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header("content-type", "text/plain; charset=utf-8"))
    };
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return text(405, "method not allowed\n");
    }
    let path = url.split(['?', '#']).next().unwrap_or("/");
    let (body, content_type) = if path == "/config.json" {
        (config.as_bytes().to_vec(), "application/json")
    } else if let Some((_, file, content_type)) = FILES.iter().find(|(p, ..)| *p == path) {
        let file: PathBuf = dir.join(file);
        match std::fs::read(&file) {
            Ok(bytes) => (bytes, *content_type),
            Err(err) => return text(500, &format!("cannot read {}: {err}\n", file.display())),
        }
    } else {
        return text(404, "not found\n");
    };
    tiny_http::Response::from_data(body)
        .with_header(header("content-type", content_type))
        .with_header(header("cache-control", "no-cache"))
        .with_header(header("content-security-policy", csp))
        .with_header(header("x-content-type-options", "nosniff"))
        .with_header(header("referrer-policy", "no-referrer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_allows_both_names_of_the_page_after_the_developers_origins() {
        let environment = cors_environment(WEB_PORT, |_| None);
        assert_eq!(environment.len(), crate::services::SERVICES.len());
        for (key, value) in &environment {
            assert!(key.ends_with("__SERVER__CORS__ALLOWED_ORIGINS"), "{key}");
            assert_eq!(value, "http://localhost:50050,http://127.0.0.1:50050");
        }
        let theirs = cors_environment(WEB_PORT, |key| {
            (key == "TRELLIS_USER__SERVER__CORS__ALLOWED_ORIGINS")
                .then(|| "http://localhost:5173".to_owned())
        });
        let user = theirs
            .iter()
            .find(|(key, _)| key.starts_with("TRELLIS_USER__"))
            .map(|(_, value)| value.as_str());
        assert_eq!(
            user,
            Some("http://localhost:5173,http://localhost:50050,http://127.0.0.1:50050")
        );
    }

    #[test]
    fn only_the_pages_files_are_served() {
        let root = crate::workspace_root();
        let dir = root.join(WEB_DIR);
        let get = |url: &str| respond(&dir, "{}", "csp", &tiny_http::Method::Get, url);
        for (path, ..) in FILES {
            assert_eq!(get(path).status_code().0, 200, "{path}");
        }
        assert_eq!(get("/config.json").status_code().0, 200);
        assert_eq!(get("/app.js?v=1").status_code().0, 200);
        for path in [
            "/../Cargo.toml",
            "/web/index.html",
            "/.git/config",
            "/test/",
        ] {
            assert_eq!(get(path).status_code().0, 404, "{path}");
        }
        let post = respond(&dir, "{}", "csp", &tiny_http::Method::Post, "/");
        assert_eq!(post.status_code().0, 405);
    }
}
