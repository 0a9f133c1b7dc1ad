//! Watch: the instances under one service's key prefix — `Range` over the prefix,
//! publish, then `Watch` from the range's revision + 1 applying each PUT and DELETE. A
//! compacted, cancelled or broken watch ranges again and watches anew; until then the
//! last set stays published.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::WatchStream;
use trellis_proto::etcd::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use trellis_proto::etcd::mvccpb::{KeyValue, event::EventType};

use super::cluster::{Cluster, status_error};
use super::{BACKEND, Backoff, MAX_RETRY, Record};
use crate::discovery::{DiscoveryError, Instance, Publisher};

/// The task behind one [`Watch`]: follows the instances under one service's prefix.
pub(super) struct Follower {
    pub(super) cluster: Arc<Cluster>,
    pub(super) peer: String,
    pub(super) prefix: Vec<u8>,
    pub(super) publisher: Publisher,
}

impl Follower {
    /// Follows until every [`Watch`] is gone, ranging and watching again after a failure.
    pub(super) async fn run(self) {
        let mut backoff = Backoff::new(MAX_RETRY);
        loop {
            let failure = tokio::select! {
                () = self.publisher.closed() => return,
                failure = self.follow(&mut backoff) => failure,
            };
            tracing::warn!(
                peer = self.peer,
                prefix = %String::from_utf8_lossy(&self.prefix),
                error = %failure,
                "etcd watch failed; keeping the last instances and retrying"
            );
            let wait = backoff.next_delay();
            tokio::select! {
                () = self.publisher.closed() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Ranges over the prefix, publishes, then applies the watch's events until it stops;
    /// answers why it stopped.
    async fn follow(&self, backoff: &mut Backoff) -> DiscoveryError {
        let range_end = prefix_end(&self.prefix);
        let request = RangeRequest {
            key: self.prefix.clone(),
            range_end: range_end.clone(),
            ..RangeRequest::default()
        };
        let range = match self
            .cluster
            .call("Range", |channel| {
                let request = request.clone();
                async move { KvClient::new(channel).range(request).await }
            })
            .await
        {
            Ok(range) => range,
            Err(err) => return err,
        };
        let mut instances: BTreeMap<Vec<u8>, Instance> = range
            .kvs
            .into_iter()
            .filter_map(|kv| Some((kv.key.clone(), instance(&kv)?)))
            .collect();
        self.publisher
            .publish(instances.values().cloned().collect());
        backoff.reset();

        let revision = range.header.map_or(0, |header| header.revision);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.prefix.clone(),
                range_end,
                start_revision: revision + 1,
                ..WatchCreateRequest::default()
            })),
        };
        // The request stream stays open after its one create request while this future
        // runs (etcd ends a watch whose client side ends), and ends with it: the
        // connection, not this future, sends it.
        let (open, _) = tokio::sync::watch::channel(());
        let opened = self
            .cluster
            .call("Watch", |channel| {
                let until_done = WatchStream::from_changes(open.subscribe()).filter_map(|()| None);
                let requests = tokio_stream::iter([create.clone()]).chain(until_done);
                async move { WatchClient::new(channel).watch(requests).await }
            })
            .await;
        let mut responses = match opened {
            Ok(responses) => responses,
            Err(err) => return err,
        };
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return DiscoveryError::backend(BACKEND, "the watch stream ended"),
                Err(status) => return status_error("Watch", "", &status),
            };
            if response.compact_revision > 0 {
                return DiscoveryError::backend(
                    BACKEND,
                    format!(
                        "revision {} is compacted (the oldest kept is {}): listing again",
                        revision + 1,
                        response.compact_revision
                    ),
                );
            }
            if response.canceled {
                return DiscoveryError::backend(
                    BACKEND,
                    format!("the watch was cancelled: {}", response.cancel_reason),
                );
            }
            if response.events.is_empty() {
                continue;
            }
            for event in response.events {
                let event_type = event.r#type();
                let Some(kv) = event.kv else { continue };
                let found = match event_type {
                    EventType::Put => instance(&kv),
                    EventType::Delete => None,
                };
                match found {
                    Some(found) => instances.insert(kv.key, found),
                    None => instances.remove(&kv.key),
                };
            }
            self.publisher
                .publish(instances.values().cloned().collect());
        }
    }
}

/// The instance a registration's key holds; `None`, with a warning, when its value is
/// not a registration record.
pub(super) fn instance(kv: &KeyValue) -> Option<Instance> {
    match serde_json::from_slice::<Record>(&kv.value) {
        Ok(record) => Some(Instance::new(record.uri)),
        Err(err) => {
            tracing::warn!(
                key = %String::from_utf8_lossy(&kv.key),
                error = %err,
                "ignoring an etcd key that is not a registration"
            );
            None
        }
    }
}

/// The `range_end` that makes a range or watch cover every key starting with `prefix`:
/// the prefix with its last byte below 0xff incremented and what follows dropped; `\0`
/// (every key from `prefix` on) when there is none. The rule of etcd's `RangeRequest`
/// documentation and of clientv3's `GetPrefixRangeEnd`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/s/user/"), b"/s/user0");
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
        assert_eq!(prefix_end(&[0xff, 0xff]), [0]);
    }

    #[test]
    fn a_key_that_is_not_a_registration_is_ignored() {
        let kv = |value: &str| KeyValue {
            key: b"/k".to_vec(),
            value: value.as_bytes().to_vec(),
            ..KeyValue::default()
        };
        assert_eq!(
            instance(&kv(r#"{"uri":"http://h:1"}"#)),
            Some(Instance::new("http://h:1"))
        );
        assert_eq!(instance(&kv("http://h:1")), None);
    }
}
