//! The seed's claim, measured: the same calls over HTTP/1.1 + JSON (the transcoded
//! routes) and over gRPC (HTTP/2 + protobuf), against the same servers in the same run.
//!
//! For each call (GetUser; ListNotifications with a page of 50) and each concurrency, a
//! closed loop runs for the duration on each transport in turn: HTTP/1.1 with one
//! keep-alive connection per concurrent caller (HTTP/1.1 has one request in flight per
//! connection), gRPC with every caller on one HTTP/2 connection (as a gRPC client
//! does). Reported per transport: p50 and p99 latency, requests a second, the serving
//! process's CPU time per call (from `/proc`), and bytes on the wire per call — TCP
//! payload both ways, headers, framing and the connection's own traffic included,
//! counted by the client's sockets.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use trellis_proto::auth_v1::auth_service_client::AuthServiceClient;
use trellis_proto::auth_v1::{IssueServiceTokenRequest, LoginRequest};
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;
use trellis_proto::notification_v1::notification_service_client::NotificationServiceClient;
use trellis_proto::notification_v1::{ListNotificationsRequest, SendNotificationRequest};
use trellis_proto::user_v1::user_service_client::UserServiceClient;
use trellis_proto::user_v1::{CreateUserRequest, GetUserRequest};

use crate::load::SystemUnderTest;

/// Notifications in the listed page (and made before the run).
pub const PAGE: i32 = 50;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Concurrent callers, one run per value (e.g. `[1, 16]`).
    pub concurrency: Vec<usize>,
    /// Measured time of each run.
    pub duration: Duration,
    /// Unmeasured calls first, per run.
    pub warmup: Duration,
}

/// The two calls compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Call {
    /// `GET /v1/users/{id}` / `UserService/GetUser`.
    GetUser,
    /// `GET /v1/notifications?pageSize=50` / `NotificationService/ListNotifications`.
    ListNotifications,
}

/// The two transports compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// HTTP/1.1 with JSON bodies.
    Http1Json,
    /// gRPC: HTTP/2 with protobuf.
    Grpc,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// The call.
    pub call: Call,
    /// The transport.
    pub transport: Transport,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Calls completed in the window.
    pub calls: u64,
    /// Calls that failed (any error or non-OK status).
    pub errors: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Calls a second.
    pub rps: f64,
    /// The serving process's CPU time per call, µs.
    pub server_cpu_us_per_call: f64,
    /// TCP payload bytes per call, both directions.
    pub bytes_per_call: f64,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Every run.
    pub runs: Vec<Figures>,
}

impl Comparison {
    /// A plain-text table, with gRPC's figures as ratios of HTTP/JSON's at the same call
    /// and concurrency.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<19} {:>4} {:<10} {:>9} {:>9} {:>9} {:>10} {:>10}\n",
            "call", "conc", "transport", "p50 µs", "p99 µs", "req/s", "cpu µs/call", "bytes/call"
        );
        for run in &self.runs {
            out.push_str(&format!(
                "{:<19} {:>4} {:<10} {:>9} {:>9} {:>9.0} {:>10.1} {:>10.0}\n",
                format!("{:?}", run.call),
                run.concurrency,
                match run.transport {
                    Transport::Http1Json => "http1+json",
                    Transport::Grpc => "grpc",
                },
                run.p50_us,
                run.p99_us,
                run.rps,
                run.server_cpu_us_per_call,
                run.bytes_per_call,
            ));
        }
        for ratio in self.ratios() {
            out.push_str(&format!(
                "{:?} at {}: gRPC/JSON p50 {:.2}, p99 {:.2}, bytes {:.2}, cpu/call {:.2}, req/s {:.2}\n",
                ratio.call, ratio.concurrency, ratio.p50, ratio.p99, ratio.bytes, ratio.cpu, ratio.rps
            ));
        }
        out
    }

    /// gRPC's figures over HTTP/JSON's, per call and concurrency.
    pub fn ratios(&self) -> Vec<Ratio> {
        let mut ratios = Vec::new();
        for grpc in self.runs.iter().filter(|r| r.transport == Transport::Grpc) {
            let Some(json) = self.runs.iter().find(|r| {
                r.transport == Transport::Http1Json
                    && r.call == grpc.call
                    && r.concurrency == grpc.concurrency
            }) else {
                continue;
            };
            let over = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            ratios.push(Ratio {
                call: grpc.call,
                concurrency: grpc.concurrency,
                p50: over(grpc.p50_us as f64, json.p50_us as f64),
                p99: over(grpc.p99_us as f64, json.p99_us as f64),
                bytes: over(grpc.bytes_per_call, json.bytes_per_call),
                cpu: over(grpc.server_cpu_us_per_call, json.server_cpu_us_per_call),
                rps: over(grpc.rps, json.rps),
            });
        }
        ratios
    }
}

/// gRPC over HTTP/JSON for one call and concurrency (below 1: gRPC is lower).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The call.
    pub call: Call,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Median latency.
    pub p50: f64,
    /// 99th percentile latency.
    pub p99: f64,
    /// Bytes on the wire per call.
    pub bytes: f64,
    /// Server CPU per call.
    pub cpu: f64,
    /// Requests a second.
    pub rps: f64,
}

/// Bytes read and written through the sockets that share it.
#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
}

/// A TCP stream that counts its payload bytes.
struct Counted {
    stream: TcpStream,
    counters: Arc<Counters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.counters
            .bytes
            .fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            self.counters
                .bytes
                .fetch_add(*written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn counted(addr: SocketAddr, counters: &Arc<Counters>) -> io::Result<Counted> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Counted {
        stream,
        counters: Arc::clone(counters),
    })
}

/// What the calls need: the account's id and token, the services' addresses and pids.
struct Setup {
    user: SocketAddr,
    notification: SocketAddr,
    user_id: String,
    token: String,
    user_pid: Option<u32>,
    notification_pid: Option<u32>,
}

fn address(uri: Option<&String>, name: &str) -> anyhow::Result<SocketAddr> {
    let uri = uri.with_context(|| format!("no {name} target"))?;
    uri.trim_start_matches("http://")
        .parse()
        .with_context(|| format!("{name} target `{uri}` is not http://IP:PORT"))
}

/// Signs up an account, logs in, and gives it [`PAGE`] notifications.
async fn setup(sut: &SystemUnderTest) -> anyhow::Result<Setup> {
    let channel = |uri: &String| {
        Endpoint::from_shared(uri.clone())
            .map(|endpoint| endpoint.connect_lazy())
            .with_context(|| format!("`{uri}` is not a URI"))
    };
    let targets = &sut.targets;
    let (user_uri, auth_uri, notification_uri) = (
        targets.user.as_ref().context("no user target")?,
        targets.auth.as_ref().context("no auth target")?,
        targets
            .notification
            .as_ref()
            .context("no notification target")?,
    );
    let email = format!("transports-{}@example.com", std::process::id());
    let password = "bench password 0123456789";
    let user = UserServiceClient::new(channel(user_uri)?)
        .create_user(CreateUserRequest {
            email: email.clone(),
            display_name: "Bench".to_owned(),
            password: password.to_owned(),
        })
        .await
        .context("signing up")?
        .into_inner()
        .user
        .context("no user")?;
    let mut auth = AuthServiceClient::new(channel(auth_uri)?);
    let token = auth
        .login(LoginRequest {
            email,
            password: password.to_owned(),
        })
        .await
        .context("logging in")?
        .into_inner()
        .tokens
        .context("no tokens")?
        .access_token;
    let (client_id, client_secret) = sut
        .service_client
        .clone()
        .context("no service credentials to make notifications with")?;
    let service_token = auth
        .issue_service_token(IssueServiceTokenRequest {
            client_id,
            client_secret,
            audience: "notification".to_owned(),
        })
        .await
        .context("getting a service token")?
        .into_inner()
        .access_token;
    let bearer: MetadataValue<_> = format!("Bearer {service_token}").parse()?;
    let mut internal = NotificationInternalServiceClient::new(channel(notification_uri)?);
    for n in 0..PAGE {
        let mut request = tonic::Request::new(SendNotificationRequest {
            user_id: user.id.clone(),
            kind: "bench".to_owned(),
            title: format!("Notification {n}"),
            body: "A notification of the transports comparison, with a body of ordinary length."
                .to_owned(),
            idempotency_key: format!("transports-{n}"),
        });
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        internal
            .send_notification(request)
            .await
            .context("making a notification")?;
    }
    let pid = |name: &str| {
        sut.processes
            .iter()
            .find(|(process, _)| process.contains(name))
            .map(|(_, pid)| *pid)
    };
    Ok(Setup {
        user: address(Some(user_uri), "user")?,
        notification: address(Some(notification_uri), "notification")?,
        user_id: user.id,
        token,
        user_pid: pid("user"),
        notification_pid: pid("notification"),
    })
}

/// Runs every call × concurrency × transport.
///
/// # Errors
/// The set-up fails, or a connection cannot be made.
pub async fn run(sut: &SystemUnderTest, options: &Options) -> anyhow::Result<Comparison> {
    let setup = Arc::new(setup(sut).await?);
    let mut runs = Vec::new();
    for call in [Call::GetUser, Call::ListNotifications] {
        for &concurrency in &options.concurrency {
            for transport in [Transport::Http1Json, Transport::Grpc] {
                let figures = measure(&setup, call, transport, concurrency, options).await?;
                eprintln!(
                    "trellis-bench: {call:?} × {concurrency} over {transport:?}: {:.0} req/s, p50 {} µs, {:.0} bytes/call",
                    figures.rps, figures.p50_us, figures.bytes_per_call
                );
                runs.push(figures);
            }
        }
    }
    Ok(Comparison { runs })
}

/// One caller's way of making the call.
enum Caller {
    Json(
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        http::Request<Empty<Bytes>>,
    ),
    Grpc(GrpcCall),
}

enum GrpcCall {
    GetUser(UserServiceClient<tonic::transport::Channel>, String),
    List(NotificationServiceClient<tonic::transport::Channel>),
}

impl Caller {
    /// One call; true when it succeeded.
    async fn call(&mut self, token: &str) -> bool {
        match self {
            Self::Json(sender, template) => {
                let mut request = http::Request::builder()
                    .method(template.method().clone())
                    .uri(template.uri().clone());
                for (name, value) in template.headers() {
                    request = request.header(name, value);
                }
                let Ok(request) = request.body(Empty::new()) else {
                    return false;
                };
                if sender.ready().await.is_err() {
                    return false;
                }
                match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        ok && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                }
            }
            Self::Grpc(call) => {
                let bearer: MetadataValue<_> = match format!("Bearer {token}").parse() {
                    Ok(bearer) => bearer,
                    Err(_) => return false,
                };
                match call {
                    GrpcCall::GetUser(client, id) => {
                        let mut request = tonic::Request::new(GetUserRequest { id: id.clone() });
                        request.metadata_mut().insert("authorization", bearer);
                        client.get_user(request).await.is_ok()
                    }
                    GrpcCall::List(client) => {
                        let mut request = tonic::Request::new(ListNotificationsRequest {
                            page_size: PAGE,
                            ..ListNotificationsRequest::default()
                        });
                        request.metadata_mut().insert("authorization", bearer);
                        client.list_notifications(request).await.is_ok()
                    }
                }
            }
        }
    }
}

async fn measure(
    setup: &Arc<Setup>,
    call: Call,
    transport: Transport,
    concurrency: usize,
    options: &Options,
) -> anyhow::Result<Figures> {
    let counters = Arc::new(Counters::default());
    let (addr, pid) = match call {
        Call::GetUser => (setup.user, setup.user_pid),
        Call::ListNotifications => (setup.notification, setup.notification_pid),
    };
    let mut callers = Vec::with_capacity(concurrency);
    match transport {
        Transport::Http1Json => {
            let path = match call {
                Call::GetUser => format!("/v1/users/{}", setup.user_id),
                Call::ListNotifications => format!("/v1/notifications?pageSize={PAGE}"),
            };
            for _ in 0..concurrency {
                let stream = counted(addr, &counters).await?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                let template = http::Request::builder()
                    .uri(path.as_str())
                    .header("host", addr.to_string())
                    .header("authorization", format!("Bearer {}", setup.token))
                    .header("accept", "application/json")
                    .body(Empty::new())?;
                callers.push(Caller::Json(sender, template));
            }
        }
        Transport::Grpc => {
            let connector_counters = Arc::clone(&counters);
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .executor(TokioExecutor::new())
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let counters = Arc::clone(&connector_counters);
                    async move { counted(addr, &counters).await.map(TokioIo::new) }
                }))
                .await
                .context("connecting over gRPC")?;
            for _ in 0..concurrency {
                callers.push(Caller::Grpc(match call {
                    Call::GetUser => GrpcCall::GetUser(
                        UserServiceClient::new(channel.clone()),
                        setup.user_id.clone(),
                    ),
                    Call::ListNotifications => {
                        GrpcCall::List(NotificationServiceClient::new(channel.clone()))
                    }
                }));
            }
        }
    }
    // Warm-up, unmeasured.
    let warm_until = Instant::now() + options.warmup;
    let mut tasks = tokio::task::JoinSet::new();
    let measured_from = warm_until;
    let measured_until = warm_until + options.duration;
    let cpu_before = Arc::new(tokio::sync::OnceCell::new());
    let bytes_before = Arc::new(tokio::sync::OnceCell::new());
    for mut caller in callers {
        let setup = Arc::clone(setup);
        let (cpu_before, bytes_before, counters) = (
            Arc::clone(&cpu_before),
            Arc::clone(&bytes_before),
            Arc::clone(&counters),
        );
        tasks.spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            let (mut calls, mut errors) = (0u64, 0u64);
            loop {
                let started = Instant::now();
                if started >= measured_until {
                    break;
                }
                if started >= measured_from {
                    cpu_before
                        .get_or_init(|| async { pid.and_then(cpu_time) })
                        .await;
                    bytes_before
                        .get_or_init(|| async { counters.bytes.load(Ordering::Relaxed) })
                        .await;
                }
                let ok = caller.call(&setup.token).await;
                if started >= measured_from {
                    let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    histogram.saturating_record(elapsed.max(1));
                    calls += 1;
                    errors += u64::from(!ok);
                }
            }
            anyhow::Ok((histogram, calls, errors))
        });
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let (mut calls, mut errors) = (0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let (part, part_calls, part_errors) = joined??;
        histogram
            .add(part)
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        calls += part_calls;
        errors += part_errors;
    }
    let cpu_after = pid.and_then(cpu_time);
    let bytes =
        counters.bytes.load(Ordering::Relaxed) - bytes_before.get().copied().unwrap_or_default();
    let cpu = match (cpu_before.get().copied().flatten(), cpu_after) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => Duration::ZERO,
    };
    let per_call = |total: f64| if calls > 0 { total / calls as f64 } else { 0.0 };
    Ok(Figures {
        call,
        transport,
        concurrency,
        calls,
        errors,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        rps: calls as f64 / options.duration.as_secs_f64(),
        server_cpu_us_per_call: per_call(cpu.as_secs_f64() * 1e6),
        bytes_per_call: per_call(bytes as f64),
    })
}

fn cpu_time(pid: u32) -> Option<Duration> {
    crate::procstat::sample(pid).ok().map(|sample| sample.cpu)
}
