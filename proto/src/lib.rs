//! Trellis's wire contract: Rust types, clients and servers generated from `proto/trellis`,
//! one module per protobuf package, plus the encoded descriptor set for reflection.

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
    /// `trellis.notification.*`
    pub mod notification {
        /// `trellis.notification.v1`: the notification service's contract.
        #[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
        pub mod v1 {
            tonic::include_proto!("trellis.notification.v1");
        }
    }
}

pub use trellis::auth::v1 as auth_v1;
pub use trellis::notification::v1 as notification_v1;
pub use trellis::user::v1 as user_v1;

/// Full gRPC method paths, for code that calls methods by path (the platform's outbox).
pub mod paths {
    /// `trellis.notification.v1.NotificationInternalService/SendNotification`.
    pub const SEND_NOTIFICATION: &str =
        "/trellis.notification.v1.NotificationInternalService/SendNotification";
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
    }
}
