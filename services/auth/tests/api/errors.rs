//! INTERNAL statuses: the cause is logged, never sent.

use std::collections::HashMap;
use std::sync::Arc;

use auth_service::domain::throttle::LoginThrottle;
use auth_service::domain::{Auth, AuthError, User, UserDirectory};
use auth_service::grpc::AuthHandlers;
use auth_service::storage::SeaOrmAuthRepository;
use sea_orm::Database;
use tonic::{Code, Request};
use trellis_proto::auth_v1 as pb;
use trellis_proto::auth_v1::auth_service_server::AuthService as _;

use crate::helpers::test_issuer;

/// Accepts every password; every user exists.
struct AcceptAll;

impl UserDirectory for AcceptAll {
    async fn verify_credentials(&self, email: &str, _: &str) -> Result<Option<User>, AuthError> {
        Ok(Some(User {
            id: uuid::Uuid::now_v7().to_string(),
            email: email.to_owned(),
            roles: Vec::new(),
        }))
    }

    async fn lookup_user(&self, id: &str) -> Result<Option<User>, AuthError> {
        Ok(Some(User {
            id: id.to_owned(),
            email: "ada@example.com".to_owned(),
            roles: Vec::new(),
        }))
    }
}

#[tokio::test]
async fn a_storage_failure_is_internal_with_no_detail() {
    // A database with no tables: every query fails with an SQL error.
    let db = Database::connect("sqlite::memory:")
        .await
        .expect("connects");
    let issuer = test_issuer();
    let auth = Auth::new(
        SeaOrmAuthRepository::new(
            db,
            auth_service::peers::sign_in_events(trellis_platform::outbox::OutboxWaker::default()),
        ),
        AcceptAll,
        issuer,
        LoginThrottle::new(100, 1000),
        HashMap::new(),
    );
    let handlers = AuthHandlers::new(Arc::new(auth));

    let login = handlers
        .login(Request::new(pb::LoginRequest {
            email: "ada@example.com".to_owned(),
            password: "correct horse battery".to_owned(),
        }))
        .await
        .expect_err("storage fails");
    let refresh = handlers
        .refresh_token(Request::new(pb::RefreshTokenRequest {
            refresh_token: "some-token".to_owned(),
        }))
        .await
        .expect_err("storage fails");
    for status in [login, refresh] {
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        assert!(status.details().is_empty());
    }
}
