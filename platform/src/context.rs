//! Request context carried from a server handler to the peer calls it causes: today the
//! request id (`x-request-id`), kept in a task-local while the handler runs. Both the
//! server (which installs it) and peer clients and the outbox (which forward it) use this
//! module; it depends on nothing else in the platform.

use std::future::Future;

/// The header that carries a request id between services.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id accepted from a caller, in bytes; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, when called from inside a handler (or a
/// [`scope`]).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// `future`, run as part of the request `id`: the server's request-id layer wraps each
/// handler in it, and background work that continues a request (an outbox delivery)
/// awaits it.
pub fn scope<F: Future>(id: String, future: F) -> tokio::task::futures::TaskLocalFuture<String, F> {
    REQUEST_ID.scope(id, future)
}
