//! Trellis's wire contract: Rust types, clients and servers generated from `proto/trellis`,
//! one module per protobuf package, plus the encoded descriptor set for reflection; and
//! clients of etcd's v3 API ([`etcd`]) for the platform's etcd discovery backend.

/// Generated code for the `trellis.*` protobuf packages.
pub mod trellis {
    /// `trellis.user.*`
    pub mod user {
        /// `trellis.user.v1`: the user service's contract.
        #[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
        pub mod v1 {
            tonic::include_proto!("trellis.user.v1");
        }
    }

    /// `trellis.auth.*`
    pub mod auth {
        /// `trellis.auth.v1`: the auth service's contract.
        #[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
        pub mod v1 {
            tonic::include_proto!("trellis.auth.v1");
        }
    }
    /// `trellis.greeter.*`
    pub mod greeter {
        /// `trellis.greeter.v1`: the example service's contract.
        #[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
        pub mod v1 {
            tonic::include_proto!("trellis.greeter.v1");
        }
    }

    /// `trellis.notification.*`
    pub mod notification {
        /// `trellis.notification.v1`: the notification service's contract.
        #[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
        pub mod v1 {
            tonic::include_proto!("trellis.notification.v1");
        }
    }
}

/// etcd's v3 API, clients only: the KV (Range, Put, DeleteRange), Watch and Lease
/// (LeaseGrant, LeaseRevoke, LeaseKeepAlive) calls, generated from the protos vendored
/// under `proto/vendor/etcd` (Apache-2.0, the etcd authors; see their headers). Not part
/// of [`FILE_DESCRIPTOR_SET`]: no Trellis service serves them.
pub mod etcd {
    /// `mvccpb`: a stored key-value pair and a watch event.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }

    /// `etcdserverpb`: the KV, Watch and Lease services' clients and messages.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

pub use trellis::auth::v1 as auth_v1;
pub use trellis::greeter::v1 as greeter_v1;
pub use trellis::notification::v1 as notification_v1;
pub use trellis::user::v1 as user_v1;

/// A generated tonic server whose message-size limits can be set.
///
/// tonic generates `max_decoding_message_size`/`max_encoding_message_size` as inherent
/// methods of each `*Server<T>`, with no trait to call them through; this is that trait,
/// so the platform's server builder can apply the configured limit to *every* service it
/// is given (and refuse, at compile time, a server it cannot limit). Implement it for a
/// generated server with [`impl_message_limits!`].
pub trait MessageLimits {
    /// Sets both the largest accepted and the largest sent message to `max_bytes` bytes.
    #[must_use]
    fn limit_messages(self, max_bytes: usize) -> Self;
}

/// Implements [`MessageLimits`] for generated tonic servers, e.g.
/// `impl_message_limits!(greeter_v1::greeter_service_server::GreeterServiceServer<T>);`
/// (the `T` is the handler type parameter the macro binds).
#[macro_export]
macro_rules! impl_message_limits {
    ($($server:path),+ $(,)?) => {$(
        impl<T> $crate::MessageLimits for $server {
            fn limit_messages(self, max_bytes: usize) -> Self {
                self.max_decoding_message_size(max_bytes)
                    .max_encoding_message_size(max_bytes)
            }
        }
    )+};
}

impl_message_limits!(
    user_v1::user_service_server::UserServiceServer<T>,
    user_v1::user_internal_service_server::UserInternalServiceServer<T>,
    auth_v1::auth_service_server::AuthServiceServer<T>,
    auth_v1::auth_internal_service_server::AuthInternalServiceServer<T>,
    greeter_v1::greeter_service_server::GreeterServiceServer<T>,
    notification_v1::notification_service_server::NotificationServiceServer<T>,
    notification_v1::notification_internal_service_server::NotificationInternalServiceServer<T>,
);

/// Full gRPC method paths, for code that calls methods by path (the platform's outbox).
pub mod paths {
    /// `trellis.notification.v1.NotificationInternalService/SendNotification`.
    pub const SEND_NOTIFICATION: &str =
        "/trellis.notification.v1.NotificationInternalService/SendNotification";
    /// `trellis.auth.v1.AuthInternalService/RevokeUserTokens`.
    pub const REVOKE_USER_TOKENS: &str = "/trellis.auth.v1.AuthInternalService/RevokeUserTokens";
}

/// The encoded `google.protobuf.FileDescriptorSet` of every Trellis proto file and its
/// imports (the well-known types included), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/trellis_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message as _;

    #[test]
    fn descriptor_set_holds_user_proto_and_its_imports() {
        let set =
            prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap_or_default();
        let names: Vec<_> = set.file.iter().filter_map(|f| f.name.as_deref()).collect();
        assert!(names.contains(&"trellis/user/v1/user.proto"), "{names:?}");
        assert!(
            names.contains(&"google/protobuf/timestamp.proto"),
            "{names:?}"
        );
        assert!(
            names.contains(&"google/protobuf/field_mask.proto"),
            "{names:?}"
        );
        assert!(
            !names.iter().any(|name| name.starts_with("etcd/")),
            "etcd's API is a client only, not reflected: {names:?}"
        );
    }
}
