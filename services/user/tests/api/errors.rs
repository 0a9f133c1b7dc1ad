//! INTERNAL statuses: the cause is logged, never sent.

use pb::user_service_server::UserService as _;
use sea_orm::Database;
use tonic::{Code, Request};
use trellis_platform::auth::{Principal, PrincipalKind};
use trellis_platform::pagination::PageTokenCodec;
use trellis_proto::user_v1 as pb;
use user_service::domain::{PasswordHasher, Users, password::HashCost};
use user_service::grpc::UserHandlers;
use user_service::storage::SeaOrmUserRepository;

#[tokio::test]
async fn a_database_failure_is_internal_with_no_detail() {
    // A database with no `users` table: every query fails with an SQL error.
    let db = Database::connect("sqlite::memory:")
        .await
        .expect("connects");
    let hasher = PasswordHasher::new(HashCost::default()).expect("hasher");
    let handlers = UserHandlers::new(
        Users::new(
            SeaOrmUserRepository::new(
                db,
                user_service::peers::account_events(
                    trellis_platform::outbox::OutboxWaker::default(),
                ),
            ),
            hasher,
        ),
        PageTokenCodec::random(),
    );
    let mut request = Request::new(pb::GetUserRequest {
        id: uuid::Uuid::now_v7().to_string(),
    });
    request.extensions_mut().insert(Principal {
        subject: uuid::Uuid::now_v7().to_string(),
        kind: PrincipalKind::User,
        roles: vec!["admin".to_owned()],
        expires_at: None,
        bound_to: None,
        workload: None,
    });
    let status = handlers.get_user(request).await.expect_err("storage fails");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "internal error");
    assert!(status.details().is_empty());
}
