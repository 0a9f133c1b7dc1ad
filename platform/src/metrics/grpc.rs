//! The gRPC metric families of go-grpc-middleware's Prometheus provider, for one side of a
//! call (`grpc_server_*` or `grpc_client_*`): the method table they are labelled from,
//! grpc-go's code spellings, the per-call record, and the count of length-prefixed
//! messages in a body.
//!
//! Labels are resolved once per method (at start-up for the server, on a method's first
//! call for the client), so a call costs a map lookup and a few atomic operations.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use prost::Message as _;
use tonic::Code;

use super::MetricsError;

/// Every gRPC status code, in numeric order (the index is the code's value).
pub const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// `code` as grpc-go's `codes.Code.String()` spells it, the `grpc_code` label value
/// dashboards filter on: `OK`, `Canceled` (one L, where tonic prints `Cancelled`),
/// `DeadlineExceeded`, …
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// gRPC's canonical name of `code` (`NOT_FOUND`), as the spec's status code table and
/// grpcurl spell it.
#[must_use]
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `grpc_service` and `grpc_method` label value of every path no descriptor names
/// (a scanner's made-up methods all land in one series).
pub const UNKNOWN: &str = "unknown";

/// The service and method names of a call whose path the server's method table knows:
/// put into the request's extensions by [`super::MetricsLayer`] (the outermost layer,
/// which looks every path up anyway). Spans, log lines and labels take a method's name
/// only from here, never from the raw path: a path no descriptor names (a scanner's
/// `/no.Such/Method`, random bytes) has no `KnownMethod`, and is called [`UNKNOWN`], so
/// no caller can mint label values or log fields.
#[derive(Debug, Clone)]
pub struct KnownMethod(Arc<MethodInfo>);

impl KnownMethod {
    /// The names of the method `info` describes (the server's table makes them).
    pub(crate) fn new(info: MethodInfo) -> Self {
        Self(Arc::new(info))
    }

    /// The fully qualified service name, e.g. `trellis.user.v1.UserService`.
    pub fn service(&self) -> &str {
        &self.0.service
    }

    /// The method name, e.g. `GetUser`.
    pub fn method(&self) -> &str {
        &self.0.method
    }

    /// Whether the method streams its requests, its responses, both or neither.
    pub fn rpc_type(&self) -> RpcType {
        self.0.rpc_type
    }

    /// The `(service, method)` of `extensions`' known method, or ([`UNKNOWN`],
    /// [`UNKNOWN`]).
    pub fn names_in(extensions: &http::Extensions) -> (&str, &str) {
        extensions
            .get::<Self>()
            .map_or((UNKNOWN, UNKNOWN), |known| {
                (known.service(), known.method())
            })
    }
}

/// The kind of a method, from its descriptor's streaming flags: the `grpc_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcType {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStream,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl RpcType {
    /// The kind of a method whose client and server stream as given.
    pub fn from_streaming(client_streaming: bool, server_streaming: bool) -> Self {
        match (client_streaming, server_streaming) {
            (false, false) => Self::Unary,
            (true, false) => Self::ClientStream,
            (false, true) => Self::ServerStream,
            (true, true) => Self::BidiStream,
        }
    }

    /// The label value: `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }
}

/// One method a side knows: its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// `grpc_type`.
    pub rpc_type: RpcType,
    /// `grpc_service`, the fully qualified service name, e.g. `trellis.user.v1.UserService`.
    pub service: String,
    /// `grpc_method`, e.g. `GetUser`.
    pub method: String,
}

/// Calls `visit` with the fully qualified service name (e.g. `trellis.user.v1.UserService`)
/// and the descriptor of every method an encoded `FileDescriptorSet` describes. Peer
/// channels read idempotency from the same walk ([`crate::peer::MethodTable`]).
///
/// # Errors
/// [`prost::DecodeError`] when the set cannot be decoded.
pub fn for_each_method(
    encoded: &[u8],
    mut visit: impl FnMut(&str, &prost_types::MethodDescriptorProto),
) -> Result<(), prost::DecodeError> {
    let set = prost_types::FileDescriptorSet::decode(encoded)?;
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            let name = if package.is_empty() {
                service.name().to_owned()
            } else {
                format!("{package}.{}", service.name())
            };
            for method in &service.method {
                visit(&name, method);
            }
        }
    }
    Ok(())
}

/// The methods of the services named, by path (`/package.Service/Method`), read from
/// encoded `FileDescriptorSet`s; `services: None` takes every service the sets describe.
///
/// # Errors
/// [`MetricsError::Descriptor`] when a set cannot be decoded.
pub fn method_table(
    descriptor_sets: &[&[u8]],
    services: Option<&[&str]>,
) -> Result<HashMap<String, MethodInfo>, MetricsError> {
    let mut table = HashMap::new();
    for encoded in descriptor_sets {
        for_each_method(encoded, |name, method| {
            if services.is_some_and(|wanted| !wanted.contains(&name)) {
                return;
            }
            table.insert(
                format!("/{name}/{}", method.name()),
                MethodInfo {
                    rpc_type: RpcType::from_streaming(
                        method.client_streaming(),
                        method.server_streaming(),
                    ),
                    service: name.to_owned(),
                    method: method.name().to_owned(),
                },
            );
        })?;
    }
    Ok(table)
}

/// Which end of a call a family set measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `grpc_server_*`: calls this service answers.
    Server,
    /// `grpc_client_*`: calls this service makes to its peers.
    Client,
}

/// The five families of one side, named and described as go-grpc-middleware's provider
/// (`providers/prometheus`) does.
struct Families {
    started: IntCounterVec,
    handled: IntCounterVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    seconds: HistogramVec,
}

const LABELS: [&str; 3] = ["grpc_type", "grpc_service", "grpc_method"];
const LABELS_WITH_CODE: [&str; 4] = ["grpc_type", "grpc_service", "grpc_method", "grpc_code"];

impl Families {
    fn new(side: Side) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        Ok(match side {
            Side::Server => Self {
                started: counter(
                    "grpc_server_started_total",
                    "Total number of RPCs started on the server.",
                    &LABELS,
                )?,
                handled: counter(
                    "grpc_server_handled_total",
                    "Total number of RPCs completed on the server, regardless of success or failure.",
                    &LABELS_WITH_CODE,
                )?,
                received: counter(
                    "grpc_server_msg_received_total",
                    "Total number of RPC stream messages received on the server.",
                    &LABELS,
                )?,
                sent: counter(
                    "grpc_server_msg_sent_total",
                    "Total number of gRPC stream messages sent by the server.",
                    &LABELS,
                )?,
                seconds: HistogramVec::new(
                    HistogramOpts::new(
                        "grpc_server_handling_seconds",
                        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                    ),
                    &LABELS,
                )?,
            },
            Side::Client => Self {
                started: counter(
                    "grpc_client_started_total",
                    "Total number of RPCs started on the client.",
                    &LABELS,
                )?,
                handled: counter(
                    "grpc_client_handled_total",
                    "Total number of RPCs completed by the client, regardless of success or failure.",
                    &LABELS_WITH_CODE,
                )?,
                received: counter(
                    "grpc_client_msg_received_total",
                    "Total number of RPC stream messages received by the client.",
                    &LABELS,
                )?,
                sent: counter(
                    "grpc_client_msg_sent_total",
                    "Total number of gRPC stream messages sent by the client.",
                    &LABELS,
                )?,
                seconds: HistogramVec::new(
                    HistogramOpts::new(
                        "grpc_client_handling_seconds",
                        "Histogram of response latency (seconds) of the gRPC until it is finished by the application.",
                    ),
                    &LABELS,
                )?,
            },
        })
    }

    fn register(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.started.clone()))?;
        registry.register(Box::new(self.handled.clone()))?;
        registry.register(Box::new(self.received.clone()))?;
        registry.register(Box::new(self.sent.clone()))?;
        registry.register(Box::new(self.seconds.clone()))
    }
}

/// The gRPC metrics of one side: the families and a record per known method, plus one
/// for every unknown path.
pub struct RpcMetrics {
    methods: HashMap<String, Arc<MethodMetrics>>,
    unknown: Arc<MethodMetrics>,
    /// The code of a call whose transport failed before any status arrived.
    transport_error_code: Code,
}

impl std::fmt::Debug for RpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetrics")
            .field("methods", &self.methods.len())
            .finish_non_exhaustive()
    }
}

impl RpcMetrics {
    /// The families of `side` for the methods of `table`, registered in `registry`. With
    /// `initialize`, every method × code series exists at zero from now on (as the Go
    /// provider's `InitializeMetrics`); without, a method's series appear on its first
    /// call.
    ///
    /// # Errors
    /// [`prometheus::Error`] when the families are already registered there.
    pub fn new(
        side: Side,
        table: HashMap<String, MethodInfo>,
        registry: &prometheus::Registry,
        initialize: bool,
    ) -> Result<Self, prometheus::Error> {
        let families = Arc::new(Families::new(side)?);
        families.register(registry)?;
        let record = |info: MethodInfo, known: bool| {
            let method = Arc::new(MethodMetrics::new(Arc::clone(&families), info, known));
            if initialize {
                method.initialize();
            }
            method
        };
        let unknown = record(
            MethodInfo {
                // An unknown path has no descriptor to say; gRPC answers it UNIMPLEMENTED
                // with no stream of messages, as a unary call.
                rpc_type: RpcType::Unary,
                service: UNKNOWN.to_owned(),
                method: UNKNOWN.to_owned(),
            },
            false,
        );
        let methods = table
            .into_iter()
            .map(|(path, info)| (path, record(info, true)))
            .collect();
        Ok(Self {
            methods,
            unknown,
            transport_error_code: match side {
                Side::Server => Code::Unknown,
                // grpc-go reports a failed connection as UNAVAILABLE.
                Side::Client => Code::Unavailable,
            },
        })
    }

    /// The record of the method at `path` (`/package.Service/Method`); every path no
    /// descriptor names shares the `unknown` one.
    pub fn method(&self, path: &str) -> &Arc<MethodMetrics> {
        self.methods.get(path).unwrap_or(&self.unknown)
    }

    /// The code recorded when the transport fails before any status.
    pub fn transport_error_code(&self) -> Code {
        self.transport_error_code
    }
}

/// The label handles of one method, resolved once.
pub struct MethodMetrics {
    families: Arc<Families>,
    info: MethodInfo,
    /// `None` for the record every unknown path shares.
    known: Option<KnownMethod>,
    handles: OnceLock<Handles>,
    handled: [OnceLock<IntCounter>; 17],
}

struct Handles {
    started: IntCounter,
    received: IntCounter,
    sent: IntCounter,
    seconds: Histogram,
}

impl std::fmt::Debug for MethodMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodMetrics")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl MethodMetrics {
    fn new(families: Arc<Families>, info: MethodInfo, known: bool) -> Self {
        Self {
            families,
            known: known.then(|| KnownMethod::new(info.clone())),
            info,
            handles: OnceLock::new(),
            handled: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn labels(&self) -> [&str; 3] {
        [
            self.info.rpc_type.as_str(),
            &self.info.service,
            &self.info.method,
        ]
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let labels = self.labels();
            Handles {
                started: self.families.started.with_label_values(&labels),
                received: self.families.received.with_label_values(&labels),
                sent: self.families.sent.with_label_values(&labels),
                seconds: self.families.seconds.with_label_values(&labels),
            }
        })
    }

    fn handled(&self, code: Code) -> &IntCounter {
        let index = (code as usize).min(self.handled.len() - 1);
        self.handled[index].get_or_init(|| {
            let [rpc_type, service, method] = self.labels();
            self.families
                .handled
                .with_label_values(&[rpc_type, service, method, code_label(code)])
        })
    }

    /// Creates every series of this method at zero.
    fn initialize(&self) {
        self.handles();
        for code in ALL_CODES {
            self.handled(code);
        }
    }

    /// The method's names, for the request's extensions; `None` for an unknown path.
    pub fn known(&self) -> Option<&KnownMethod> {
        self.known.as_ref()
    }

    /// `grpc_*_msg_received_total` of this method.
    pub fn received(&self) -> IntCounter {
        self.handles().received.clone()
    }

    /// `grpc_*_msg_sent_total` of this method.
    pub fn sent(&self) -> IntCounter {
        self.handles().sent.clone()
    }
}

/// One call in progress: counted as started when made; counted as handled, with its code
/// and latency, by [`Call::finish`], or as `Canceled` when dropped unfinished (the body
/// was dropped before its end: the client went away).
#[derive(Debug)]
pub struct Call {
    method: Arc<MethodMetrics>,
    start: Instant,
    finished: bool,
}

impl Call {
    /// Starts a call of `method`.
    pub fn start(method: Arc<MethodMetrics>) -> Self {
        method.handles().started.inc();
        Self {
            method,
            start: Instant::now(),
            finished: false,
        }
    }

    /// Records the call's end with `code`; later calls do nothing.
    pub fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.method.handled(code).inc();
        self.method
            .handles()
            .seconds
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// Counts the messages of a gRPC body (gRPC over HTTP/2: each message is a 1-byte flag, a
/// 4-byte big-endian length, then that many bytes) across however the body is chunked.
#[derive(Debug, Default, Clone)]
pub struct FrameCounter {
    /// Bytes of the current message's payload still to come.
    remaining: u64,
    /// Header bytes read so far of the next message (0 between messages).
    header_read: usize,
    header: [u8; 5],
}

impl FrameCounter {
    /// Reads `chunk`, the next bytes of the body; returns how many messages it completed.
    pub fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut completed = 0;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                chunk = &chunk[take..];
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    completed += 1;
                }
                continue;
            }
            let take = (self.header.len() - self.header_read).min(chunk.len());
            self.header[self.header_read..self.header_read + take].copy_from_slice(&chunk[..take]);
            self.header_read += take;
            chunk = &chunk[take..];
            if self.header_read == self.header.len() {
                self.header_read = 0;
                let [_, a, b, c, d] = self.header;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                if self.remaining == 0 {
                    completed += 1;
                }
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_spelt_as_grpc_go_spells_it() {
        let spelt: Vec<_> = ALL_CODES.into_iter().map(code_label).collect();
        assert_eq!(
            spelt,
            [
                "OK",
                "Canceled",
                "Unknown",
                "InvalidArgument",
                "DeadlineExceeded",
                "NotFound",
                "AlreadyExists",
                "PermissionDenied",
                "ResourceExhausted",
                "FailedPrecondition",
                "Aborted",
                "OutOfRange",
                "Unimplemented",
                "Internal",
                "Unavailable",
                "DataLoss",
                "Unauthenticated",
            ]
        );
        for (value, code) in ALL_CODES.into_iter().enumerate() {
            assert_eq!(code as usize, value, "{code:?} is at its value");
        }
    }

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, len as usize));
        bytes
    }

    #[test]
    fn a_message_split_over_chunks_counts_once_when_complete() {
        let bytes = message(10);
        let mut frames = FrameCounter::default();
        // The header itself split, then the payload split.
        assert_eq!(frames.feed(&bytes[..3]), 0);
        assert_eq!(frames.feed(&bytes[3..8]), 0);
        assert_eq!(frames.feed(&bytes[8..14]), 0);
        assert_eq!(frames.feed(&bytes[14..]), 1);
    }

    #[test]
    fn messages_sharing_a_chunk_count_each() {
        let mut bytes = message(3);
        bytes.extend(message(0));
        bytes.extend(message(300));
        let mut frames = FrameCounter::default();
        assert_eq!(frames.feed(&bytes), 3);
        // Two messages and the start of a third in one chunk.
        let mut bytes = message(2);
        bytes.extend(message(1));
        let third = message(4);
        bytes.extend(&third[..6]);
        assert_eq!(frames.feed(&bytes), 2);
        assert_eq!(frames.feed(&third[6..]), 1);
        assert_eq!(frames.feed(&[]), 0);
    }

    #[test]
    fn any_chunking_counts_every_message() {
        let mut bytes = Vec::new();
        for len in [0, 1, 5, 4, 17, 0, 300] {
            bytes.extend(message(len));
        }
        for size in 1..=bytes.len() {
            let mut frames = FrameCounter::default();
            let total: u64 = bytes.chunks(size).map(|chunk| frames.feed(chunk)).sum();
            assert_eq!(total, 7, "chunks of {size} bytes");
        }
    }

    #[test]
    fn method_types_come_from_the_streaming_flags() {
        let table = method_table(&[trellis_proto::FILE_DESCRIPTOR_SET], None)
            .expect("the contracts decode");
        let of = |path: &str| table.get(path).map(|info| info.rpc_type);
        assert_eq!(
            of("/trellis.user.v1.UserService/GetUser"),
            Some(RpcType::Unary)
        );
        assert_eq!(
            of("/trellis.notification.v1.NotificationService/Subscribe"),
            Some(RpcType::ServerStream)
        );
        let health = method_table(&[tonic_health::pb::FILE_DESCRIPTOR_SET], None)
            .expect("health's descriptors decode");
        assert_eq!(
            health["/grpc.health.v1.Health/Watch"],
            MethodInfo {
                rpc_type: RpcType::ServerStream,
                service: "grpc.health.v1.Health".to_owned(),
                method: "Watch".to_owned(),
            }
        );
        let only_users = method_table(
            &[trellis_proto::FILE_DESCRIPTOR_SET],
            Some(&["trellis.user.v1.UserService"]),
        )
        .expect("the contracts decode");
        assert!(
            only_users
                .values()
                .all(|info| info.service == "trellis.user.v1.UserService")
        );
        assert!(!only_users.is_empty());
    }
}
