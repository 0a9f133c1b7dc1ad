//! The load generator against an in-process bare tonic health server on 127.0.0.1:0:
//! calls are made and counted, and an error status is counted as an error by its code.

#![allow(clippy::expect_used)]

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use trellis_bench::load::{Load, Scenario, SystemUnderTest, Targets};

/// Serves the baseline health server until the returned sender is dropped; returns its URI.
async fn health_server() -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(trellis_bench::baseline::serve(listener, async {
        let _ = stopped.await;
    }));
    (uri, stop)
}

fn short_load(rate: Option<f64>) -> Load {
    Load {
        connections: 2,
        streams: 2,
        rate,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        timeout: Duration::from_secs(5),
    }
}

fn sut(uri: String) -> SystemUnderTest {
    SystemUnderTest {
        targets: Targets {
            health: Some(uri),
            ..Targets::default()
        },
        // The test process itself stands in for the server: its CPU and memory are read.
        processes: vec![("self".to_owned(), std::process::id())],
        service_client: None,
    }
}

#[tokio::test]
async fn a_closed_loop_makes_and_counts_ok_calls() {
    let (uri, _stop) = health_server().await;
    let scenario = Scenario::Health {
        service: String::new(),
    };
    let m = trellis_bench::run(&scenario, &sut(uri), &short_load(None))
        .await
        .expect("run");
    assert!(m.ok > 0, "{m:?}");
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    assert_eq!(m.latency.len(), m.requests(), "every call is timed");
    let server = m.server.expect("the watched process was read");
    assert!(server.rss_kib["self"] > 0);
}

#[tokio::test]
async fn an_error_status_is_counted_as_an_error_by_its_code() {
    let (uri, _stop) = health_server().await;
    // The spec's Check of a service the server does not know: NOT_FOUND.
    let scenario = Scenario::Health {
        service: "no.such.Service".to_owned(),
    };
    let m = trellis_bench::run(&scenario, &sut(uri), &short_load(None))
        .await
        .expect("run");
    assert_eq!(m.ok, 0, "{m:?}");
    let not_found = m.errors.get("NOT_FOUND").copied().unwrap_or(0);
    assert!(not_found > 0, "{:?}", m.errors);
    assert_eq!(m.error_count(), not_found, "{:?}", m.errors);
}

#[tokio::test]
async fn an_open_loop_accounts_for_exactly_the_calls_due_in_the_window() {
    let (uri, _stop) = health_server().await;
    let scenario = Scenario::Health {
        service: String::new(),
    };
    // 100/s over a 0.3 s window: 30 intended sends in the window.
    let m = trellis_bench::run(&scenario, &sut(uri), &short_load(Some(100.0)))
        .await
        .expect("run");
    assert!(m.ok > 0, "{m:?}");
    assert_eq!(m.requests(), 30, "{:?}", m.errors);
}

#[tokio::test]
async fn requests_an_open_loop_could_not_send_in_the_window_count_as_unsent() {
    let (uri, _stop) = health_server().await;
    let scenario = Scenario::Health {
        service: String::new(),
    };
    // A million a second on one caller: far more than one call at a time can send.
    let load = Load {
        connections: 1,
        streams: 1,
        ..short_load(Some(1_000_000.0))
    };
    let m = trellis_bench::run(&scenario, &sut(uri), &load)
        .await
        .expect("run");
    let unsent = m
        .errors
        .get(trellis_bench::load::UNSENT)
        .copied()
        .unwrap_or(0);
    assert!(unsent > 0, "{:?}", m.errors);
    assert_eq!(
        m.requests(),
        300_000,
        "every request due in the window is accounted for"
    );
}
