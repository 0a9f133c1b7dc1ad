//! The user service's calls out: which peer call each of the domain's [`AccountEvent`]s
//! becomes. Every call this service makes to another one starts here (through the
//! outbox); with [`crate::grpc`] and `lib.rs`, the only file of the service that knows
//! protobuf types or names a peer.
//!
//! - [`AccountEvent::Welcome`] → `trellis.notification.v1.NotificationInternalService/SendNotification`
//!   on `notification`, idempotent by its key (the outbox row's id).
//! - [`AccountEvent::RevokeTokens`] → `trellis.auth.v1.AuthInternalService/RevokeUserTokens`
//!   on `auth`, idempotent by nature.

use trellis_platform::outbox::{EventOutbox, OutboxEntry, OutboxWaker};
use trellis_proto::auth_v1::RevokeUserTokensRequest;
use trellis_proto::notification_v1::SendNotificationRequest;
use uuid::Uuid;

use crate::domain::AccountEvent;

/// The peer that receives notifications, as named in the `peers` config.
pub const NOTIFICATION_PEER: &str = "notification";
/// The peer that holds refresh tokens, as named in the `peers` config.
pub const AUTH_PEER: &str = "auth";

/// The outbox of account events, waking the dispatcher through `waker` (storage takes
/// it: see `SeaOrmUserRepository::new`).
pub fn account_events(waker: OutboxWaker) -> EventOutbox<AccountEvent> {
    EventOutbox::new(waker, call_for)
}

/// The outbox call `event` becomes.
pub fn call_for(event: &AccountEvent) -> OutboxEntry {
    // The row's id is also the request's idempotency key where the method has one, so
    // redelivery cannot duplicate the effect.
    let id = Uuid::now_v7();
    match event {
        AccountEvent::Welcome {
            user_id,
            display_name,
        } => {
            let request = SendNotificationRequest {
                user_id: user_id.to_string(),
                kind: "welcome".to_owned(),
                title: format!("Welcome, {}!", display_name.as_str()),
                body: "Your Trellis account is ready.".to_owned(),
                idempotency_key: id.to_string(),
            };
            OutboxEntry::new(
                id,
                NOTIFICATION_PEER,
                trellis_proto::paths::SEND_NOTIFICATION,
                &request,
            )
        }
        AccountEvent::RevokeTokens { user_id } => {
            let request = RevokeUserTokensRequest {
                user_id: user_id.to_string(),
            };
            OutboxEntry::new(
                id,
                AUTH_PEER,
                trellis_proto::paths::REVOKE_USER_TOKENS,
                &request,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::domain::DisplayName;

    #[test]
    fn a_welcome_is_a_send_notification_keyed_by_its_row_id() -> anyhow::Result<()> {
        let user_id = Uuid::now_v7();
        let entry = call_for(&AccountEvent::Welcome {
            user_id,
            display_name: DisplayName::from_stored("Ada".to_owned()),
        });
        assert_eq!(entry.peer, NOTIFICATION_PEER);
        assert_eq!(entry.method, trellis_proto::paths::SEND_NOTIFICATION);
        let request = SendNotificationRequest::decode(entry.payload.as_slice())?;
        assert_eq!(request.user_id, user_id.to_string());
        assert_eq!(request.kind, "welcome");
        assert_eq!(request.title, "Welcome, Ada!");
        assert_eq!(request.idempotency_key, entry.id.to_string());
        Ok(())
    }

    #[test]
    fn a_revocation_is_revoke_user_tokens_at_auth() -> anyhow::Result<()> {
        let user_id = Uuid::now_v7();
        let entry = call_for(&AccountEvent::RevokeTokens { user_id });
        assert_eq!(entry.peer, AUTH_PEER);
        assert_eq!(entry.method, trellis_proto::paths::REVOKE_USER_TOKENS);
        let request = RevokeUserTokensRequest::decode(entry.payload.as_slice())?;
        assert_eq!(request.user_id, user_id.to_string());
        Ok(())
    }
}
