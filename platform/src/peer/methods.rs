//! What the protos say about each method a peer call can name: whether repeating it is
//! safe (`option idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT`, protobuf's
//! `MethodOptions`) and whether its response is a stream. Read once from encoded
//! `FileDescriptorSet`s — Trellis's own ([`trellis_proto::FILE_DESCRIPTOR_SET`]) and any a
//! service adds — so retries follow the API's declaration, not a list in code.

use std::collections::HashMap;
use std::sync::Arc;

use prost_types::method_options::IdempotencyLevel;

use crate::metrics::grpc::for_each_method;

/// One method's properties.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodInfo {
    /// Declared `NO_SIDE_EFFECTS` or `IDEMPOTENT`: safe to send again.
    pub idempotent: bool,
    /// The response is a stream (`returns (stream …)`).
    pub server_streaming: bool,
    /// The request is a stream (`rpc M(stream …)`): its body cannot be replayed.
    pub client_streaming: bool,
}

/// Method properties by HTTP/2 path, `/package.Service/Method`.
#[derive(Debug, Clone, Default)]
pub struct MethodTable {
    methods: Arc<HashMap<String, MethodInfo>>,
}

impl MethodTable {
    /// The methods of Trellis's own protos.
    pub fn trellis() -> Self {
        let mut table = Self::default();
        table.add(trellis_proto::FILE_DESCRIPTOR_SET);
        table
    }

    /// Adds the methods of an encoded `FileDescriptorSet` (e.g. a service's own,
    /// the bytes it registers for reflection). Undecodable bytes add nothing.
    pub fn add(&mut self, descriptor_set: &[u8]) {
        let methods = Arc::make_mut(&mut self.methods);
        let read = for_each_method(descriptor_set, |service, method| {
            let level = method
                .options
                .as_ref()
                .map_or(IdempotencyLevel::IdempotencyUnknown, |o| {
                    o.idempotency_level()
                });
            methods.insert(
                format!("/{service}/{}", method.name()),
                MethodInfo {
                    idempotent: matches!(
                        level,
                        IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent
                    ),
                    server_streaming: method.server_streaming(),
                    client_streaming: method.client_streaming(),
                },
            );
        });
        if read.is_err() {
            tracing::warn!("a descriptor set given for peer methods does not decode");
        }
    }

    /// The properties of the method at `path`; an unknown method is neither idempotent
    /// nor streaming.
    pub fn get(&self, path: &str) -> MethodInfo {
        self.methods.get(path).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_and_streaming_come_from_the_protos() {
        let table = MethodTable::trellis();
        let verify = table.get("/trellis.user.v1.UserInternalService/VerifyCredentials");
        assert!(verify.idempotent && !verify.server_streaming);
        assert!(table.get("/trellis.user.v1.UserService/GetUser").idempotent);
        assert!(
            table
                .get("/trellis.notification.v1.NotificationInternalService/SendNotification")
                .idempotent
        );
        let create = table.get("/trellis.user.v1.UserService/CreateUser");
        assert!(!create.idempotent, "sign-up is not declared idempotent");
        assert!(!table.get("/trellis.auth.v1.AuthService/Login").idempotent);
        let subscribe = table.get("/trellis.notification.v1.NotificationService/Subscribe");
        assert!(subscribe.server_streaming && !subscribe.client_streaming);
        let connect = table.get("/trellis.notification.v1.NotificationService/Connect");
        assert!(connect.client_streaming);
        assert_eq!(table.get("/no.Such/Method"), MethodInfo::default());
    }
}
