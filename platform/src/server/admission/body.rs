//! The request body read ahead of admission: frames kept as they came and handed on.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

use super::BoxError;

/// Reads `body` until it ends, fails, or passes `max_bytes`; the frames read are
/// replayed by the returned body, followed by whatever was not read.
pub(super) async fn prefetch<B>(body: B, max_bytes: usize) -> Prefetched<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut bytes = 0_usize;
    loop {
        if body.is_end_stream() {
            return Prefetched::read(frames, None);
        }
        match body.frame().await {
            None => return Prefetched::read(frames, None),
            Some(Err(err)) => return Prefetched::read(frames, Some(err.into())),
            Some(Ok(frame)) => {
                bytes = bytes.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                frames.push_back(frame);
                if bytes > max_bytes {
                    return Prefetched {
                        frames,
                        error: None,
                        rest: Some(body),
                    };
                }
            }
        }
    }
}

/// A request body read ahead: its frames, then its error or unread rest, if any.
pub(super) struct Prefetched<B> {
    frames: VecDeque<Frame<Bytes>>,
    error: Option<BoxError>,
    rest: Option<Pin<Box<B>>>,
}

impl<B> Prefetched<B> {
    fn read(frames: VecDeque<Frame<Bytes>>, error: Option<BoxError>) -> Self {
        Self {
            frames,
            error,
            rest: None,
        }
    }
}

impl<B> Body for Prefetched<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(err) = this.error.take() {
            return Poll::Ready(Some(Err(err)));
        }
        match &mut this.rest {
            Some(rest) => rest
                .as_mut()
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(Into::into))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: usize = self
            .frames
            .iter()
            .filter_map(|frame| frame.data_ref().map(Bytes::len))
            .sum();
        let mut hint = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |rest| rest.size_hint());
        let buffered = buffered as u64;
        hint.set_lower(hint.lower().saturating_add(buffered));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint
    }
}
