//! Request context carried from a server handler to the peer calls it causes: the
//! request id (`x-request-id`) and the call's deadline (from `grpc-timeout`), kept in
//! task-locals while the handler runs, and the `grpc-timeout` header's codec. Both the
//! server (which installs them and reads the caller's timeout) and peer clients and the
//! outbox (which forward them) use this module; it depends on nothing else in the
//! platform.

use std::future::Future;
use std::time::Duration;

use http::HeaderMap;

/// The header that carries a request id between services.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id accepted from a caller, in bytes; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether `id` may be used as a request id as given: 1 to [`MAX_REQUEST_ID_LEN`] bytes
/// of `A-Z a-z 0-9 . _ -`. Nothing else, so a caller cannot forge fields, quotes or
/// line breaks in text logs (OWASP's log-injection guidance: allowlist, don't escape).
pub fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The caller's request id when [`is_valid_request_id`] accepts it, else a fresh random
/// one (a UUIDv4 in its hyphenated form, which is valid).
pub fn request_id_or_new(given: Option<&str>) -> String {
    given
        .filter(|id| is_valid_request_id(id))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

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

tokio::task_local! {
    static DEADLINE: tokio::time::Instant;
}

/// When the call being handled must be answered by: the caller's `grpc-timeout` (or the
/// server's `server.request_timeout_ms` when shorter or unset) counted from its arrival.
/// `None` outside a handler.
pub fn deadline() -> Option<tokio::time::Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Time left until [`deadline`] (zero once it passed); `None` outside a handler. Long
/// work can stop early when too little is left, and peer calls made from the handler
/// are given no more than this.
pub fn remaining() -> Option<Duration> {
    deadline().map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
}

/// `future`, run with `deadline` as the current call's deadline (see [`deadline`]).
pub fn with_deadline<F: Future>(
    deadline: tokio::time::Instant,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<tokio::time::Instant, F> {
    DEADLINE.scope(deadline, future)
}

/// The address a per-source limit counts a caller against: an IPv4 address itself (also
/// when written as an IPv4-mapped IPv6 address, RFC 4291 §2.5.5.2), and for IPv6 its /64
/// prefix — one end site's subnet (RFC 6177), which a single host can rotate through.
pub fn source_bucket(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            std::net::Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX)).into()
        }
        v4 => v4,
    }
}

/// The `grpc-timeout` header's value: 1 to 8 ASCII digits and a unit of `H M S m u n`
/// (gRPC over HTTP/2, "Timeout"). `None` when absent or malformed.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` value: whole milliseconds, rounded up so a call is never
/// given less than it has, or seconds when the milliseconds need more than 8 digits.
pub fn encode_grpc_timeout(timeout: Duration) -> String {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_that_could_forge_log_fields_are_replaced() {
        for id in ["abc-123_X.y", &"a".repeat(MAX_REQUEST_ID_LEN)] {
            assert_eq!(request_id_or_new(Some(id)), id);
        }
        for forged in [
            "",
            "id\nlevel=ERROR msg=forged",
            "a b",
            "x\"y",
            "id=1",
            "é",
            &"a".repeat(MAX_REQUEST_ID_LEN + 1),
        ] {
            let id = request_id_or_new(Some(forged));
            assert_ne!(id, forged);
            assert!(is_valid_request_id(&id), "{id:?}");
        }
        assert!(is_valid_request_id(&request_id_or_new(None)));
    }

    proptest::proptest! {
        #[test]
        fn any_string_yields_a_valid_request_id(given in proptest::prelude::any::<String>()) {
            let id = request_id_or_new(Some(&given));
            proptest::prop_assert!(is_valid_request_id(&id));
            if is_valid_request_id(&given) {
                proptest::prop_assert_eq!(id, given);
            }
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        headers
    }

    #[test]
    fn grpc_timeout_follows_the_spec_grammar() {
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&headers("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&headers("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        for bad in ["", "m", "123456789m", "1x", "-1m", "1.5S", " 1m"] {
            assert_eq!(grpc_timeout(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn encoded_timeouts_round_up_and_fit_eight_digits() {
        assert_eq!(encode_grpc_timeout(Duration::from_micros(1500)), "2m");
        assert_eq!(encode_grpc_timeout(Duration::from_millis(30_000)), "30000m");
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "0m");
        let long = encode_grpc_timeout(Duration::from_secs(400_000));
        assert_eq!(long, "400000S");
        assert_eq!(
            grpc_timeout(&headers(&long)),
            Some(Duration::from_secs(400_000))
        );
    }
}
