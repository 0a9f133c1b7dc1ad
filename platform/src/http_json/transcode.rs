//! The inner half of HTTP/JSON transcoding: [`TranscodeLayer`] turns the JSON the
//! gateway read into the call's request message, once admission, rate limits,
//! authentication and the policy have let the call through.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::Request;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use tower::{Layer, Service};

use super::routes::{self, Route};

/// A transcoded call's JSON, read by the gateway and turned into the request message by
/// [`TranscodeLayer`] once the call is admitted and authenticated.
#[derive(Debug)]
pub(super) struct PendingJson {
    pub(super) route: Arc<Route>,
    pub(super) values: Vec<(Vec<String>, String)>,
    pub(super) query: Option<String>,
    pub(super) body: Bytes,
}

impl PendingJson {
    /// The gRPC-framed request message, or INVALID_ARGUMENT naming what is wrong.
    fn encode(&self) -> Result<Bytes, tonic::Status> {
        let values: Vec<(&[String], String)> = self
            .values
            .iter()
            .map(|(path, value)| (path.as_slice(), value.clone()))
            .collect();
        let json = routes::bind(&self.route, values, self.query.as_deref(), &self.body)
            .map_err(|err| tonic::Status::invalid_argument(err.to_string()))?;
        let message = DynamicMessage::deserialize(self.route.method.input(), json)
            .map_err(|err| tonic::Status::invalid_argument(format!("invalid request: {err}")))?;
        let encoded = message.encode_to_vec();
        let mut framed = BytesMut::with_capacity(encoded.len() + 5);
        framed.put_u8(0);
        framed.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
        framed.put_slice(&encoded);
        Ok(framed.freeze())
    }
}

/// The route layer that turns a transcoded call's JSON into its request message, inside
/// admission, rate limits, authentication and the policy (the server installs it just
/// outside field validation): JSON's parse, the costly part of a transcoded call, is
/// spent only on calls those layers let through. A body that does not bind is
/// INVALID_ARGUMENT, which the gateway answers as 400. gRPC calls pass untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct TranscodeLayer;

impl<S> Layer<S> for TranscodeLayer {
    type Service = TranscodeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TranscodeService { inner }
    }
}

/// The service [`TranscodeLayer`] makes.
#[derive(Debug, Clone)]
pub struct TranscodeService<S> {
    inner: S,
}

impl<S> Service<Request<axum::body::Body>> for TranscodeService<S>
where
    S: Service<Request<axum::body::Body>, Response = axum::response::Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<axum::response::Response, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<axum::body::Body>) -> Self::Future {
        let Some(pending) = request.extensions_mut().remove::<Arc<PendingJson>>() else {
            return futures::future::Either::Left(self.inner.call(request));
        };
        match pending.encode() {
            Ok(framed) => {
                *request.body_mut() = axum::body::Body::from(framed);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}
