//! Cases that must behave the same on every database: each suite runs them against
//! [`System`]s on SQLite and on PostgreSQL.

// Scenarios panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used)]

use std::collections::HashSet;

use sea_orm::Database;
use tonic::Code;
use trellis_proto::auth_v1::RefreshTokenRequest;
use trellis_proto::user_v1 as user;

use crate::client::{
    self, Session, log_in, notification_kinds, sign_up, sign_up_and_log_in, users,
};
use crate::{ADMIN_EMAIL, System, Trellis, assert_eventually, with_token};

/// Unique emails (whatever their case), AIP-158 pagination with no duplicate and no gap,
/// tamper-evident page tokens, and field-mask updates.
pub async fn accounts_and_pagination(system: &System) {
    let mut created = HashSet::new();
    for i in 0..40 {
        created.insert(sign_up(system, &format!("user{i}@example.com")).await.id);
    }
    let duplicate = users(system)
        .create_user(user::CreateUserRequest {
            email: "USER1@Example.COM".into(),
            display_name: "Again".into(),
            password: client::PASSWORD.into(),
        })
        .await
        .expect_err("duplicate email");
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let admin = system.sign_up_admin(ADMIN_EMAIL).await;
    created.insert(admin.user.id.clone());
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = users(system)
            .list_users(with_token(
                user::ListUsersRequest {
                    page_size: 7,
                    page_token: page_token.clone(),
                },
                admin.access(),
            ))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), created.len(), "no duplicates");
    assert_eq!(
        seen.iter().cloned().collect::<HashSet<_>>(),
        created,
        "no gaps"
    );
    let tampered = users(system)
        .list_users(with_token(
            user::ListUsersRequest {
                page_size: 7,
                page_token: format!("x{page_token}"),
            },
            admin.access(),
        ))
        .await;
    assert_eq!(
        tampered.map(drop).map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );

    let updated = users(system)
        .update_user(with_token(
            user::UpdateUserRequest {
                user: Some(user::User {
                    id: admin.user.id.clone(),
                    display_name: "Administrator".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            admin.access(),
        ))
        .await
        .expect("update")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(updated.display_name, "Administrator");
    assert_eq!(updated.email, ADMIN_EMAIL);
}

/// Sign-ups succeed while the notification service is down; once it is back, every
/// welcome arrives exactly once (the transactional outbox).
pub async fn welcome_exactly_once_across_an_outage(system: &mut System) {
    system.stop_notification().await;
    let mut signed_up = Vec::new();
    for i in 0..5 {
        signed_up.push(sign_up(system, &format!("outage{i}@example.com")).await);
    }
    system.start_notification().await;
    let mut sessions = Vec::new();
    for (i, user) in signed_up.into_iter().enumerate() {
        let tokens = log_in(system, &format!("outage{i}@example.com")).await;
        sessions.push(Session { user, tokens });
    }
    for session in &sessions {
        assert_eventually(|| async {
            notification_kinds(system, session)
                .await
                .iter()
                .any(|k| k == "welcome")
        })
        .await;
    }
    // Once the user service's outbox has nothing pending, no further delivery will come:
    // a duplicate would show now.
    wait_outbox_drained(&system.database_url("user")).await;
    for session in &sessions {
        let kinds = notification_kinds(system, session).await;
        assert_eq!(
            kinds.iter().filter(|k| *k == "welcome").count(),
            1,
            "{kinds:?}"
        );
    }
}

/// Waits until the outbox in the database at `database_url` has nothing pending: no row
/// of `outbox_messages` is still to deliver (`delivered_time` and `failed_time` both NULL).
/// From then on the sender's dispatcher delivers nothing more, so what the receiver holds
/// is final. Panics when the database cannot be read or after [`assert_eventually`]'s 15 s.
pub async fn wait_outbox_drained(database_url: &str) {
    let db = Database::connect(database_url)
        .await
        .expect("connect to the sender's database");
    assert_eventually(|| async {
        trellis_platform::outbox::pending_count(&db)
            .await
            .expect("count pending outbox messages")
            == 0
    })
    .await;
    // Best effort: the pool's connections end when it drops anyway.
    let _ = db.close().await;
}

/// Refresh tokens rotate, reuse revokes the family, and of two concurrent refreshes with
/// one token exactly one succeeds.
pub async fn refresh_rotation(system: &impl Trellis) {
    let ada = sign_up_and_log_in(system, "rotation@example.com").await;
    let refresh = |token: &str| RefreshTokenRequest {
        refresh_token: token.to_owned(),
    };
    let next = client::auth(system)
        .refresh_token(refresh(&ada.tokens.refresh_token))
        .await
        .expect("refresh")
        .into_inner()
        .tokens
        .expect("tokens");
    let replay = client::auth(system)
        .refresh_token(refresh(&ada.tokens.refresh_token))
        .await;
    assert_eq!(
        replay.map(drop).map_err(|s| s.code()),
        Err(Code::Unauthenticated)
    );
    let revoked = client::auth(system)
        .refresh_token(refresh(&next.refresh_token))
        .await;
    assert_eq!(
        revoked.map(drop).map_err(|s| s.code()),
        Err(Code::Unauthenticated)
    );

    for _ in 0..3 {
        let pair = log_in(system, "rotation@example.com").await;
        let (mut a, mut b) = (client::auth(system), client::auth(system));
        let (first, second) = tokio::join!(
            a.refresh_token(refresh(&pair.refresh_token)),
            b.refresh_token(refresh(&pair.refresh_token)),
        );
        assert_eq!(
            usize::from(first.is_ok()) + usize::from(second.is_ok()),
            1,
            "{first:?} / {second:?}"
        );
    }
}
