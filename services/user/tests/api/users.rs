//! CreateUser, GetUser, ListUsers, UpdateUser, DeleteUser: success paths and every error
//! code they promise.

use std::collections::HashSet;

use tonic::Code;
use trellis_proto::user_v1 as pb;

use crate::helpers::{PASSWORD, spawn_app, violated_fields, with_token};

#[tokio::test]
async fn create_user_keeps_email_as_entered_and_returns_no_secret() {
    let mut app = spawn_app().await;
    let user = app.create_user("Ada@Example.COM", "Ada").await;
    assert_eq!(user.email, "Ada@Example.COM");
    // The address must be valid as sent: surrounding whitespace is the contract's
    // INVALID_ARGUMENT, not trimmed.
    let padded = app
        .users
        .create_user(pb::CreateUserRequest {
            email: "  eve@example.com ".into(),
            display_name: "Eve".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect_err("a padded address is refused");
    assert_eq!(violated_fields(&padded), ["email"]);
    assert!(user.roles.is_empty(), "a new user holds no role");
    assert_eq!(user.display_name, "Ada");
    assert!(uuid::Uuid::parse_str(&user.id).is_ok());
    assert!(user.create_time.is_some() && user.create_time == user.update_time);
}

#[tokio::test]
async fn create_user_reports_every_invalid_field() {
    let mut app = spawn_app().await;
    let status = app
        .users
        .create_user(pb::CreateUserRequest {
            email: "not-an-email".into(),
            display_name: "Ada\u{0}".into(),
            password: "short".into(),
        })
        .await
        .expect_err("invalid input is rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["email", "display_name", "password"]
    );
}

#[tokio::test]
async fn create_user_with_a_taken_email_is_already_exists() {
    let mut app = spawn_app().await;
    app.create_user("ada@example.com", "Ada").await;
    let status = app
        .users
        .create_user(pb::CreateUserRequest {
            email: "ada@EXAMPLE.com".into(),
            display_name: "Another Ada".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect_err("duplicate email is rejected");
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn addresses_differing_only_by_case_are_one_account() {
    let mut app = spawn_app().await;
    let admin = app.create_user("admin@example.com", "Admin").await;
    // The whole address, local part included, is compared regardless of case.
    for variant in [
        "ADMIN@example.com",
        "Admin@Example.Com",
        "admin@EXAMPLE.COM",
    ] {
        let status = app
            .users
            .create_user(pb::CreateUserRequest {
                email: variant.into(),
                display_name: "Impostor".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect_err("a case variant of a taken address is taken");
        assert_eq!(status.code(), Code::AlreadyExists, "{variant}");
    }
    // Either case signs in to the same account.
    for variant in ["admin@example.com", "ADMIN@EXAMPLE.COM"] {
        let verified = app
            .internal
            .verify_credentials(with_token(
                pb::VerifyCredentialsRequest {
                    email: variant.into(),
                    password: PASSWORD.into(),
                },
                &app.service_token(),
            ))
            .await
            .expect("credentials are checked")
            .into_inner()
            .user;
        assert_eq!(verified.map(|u| u.id), Some(admin.id.clone()), "{variant}");
    }
    // Nor can another user move to a case variant of it.
    let grace = app.create_user("grace@example.com", "Grace").await;
    let token = app.token_for(&grace);
    let status = app
        .users
        .update_user(with_token(
            email_update(&grace.id, "ADMIN@example.com"),
            &token,
        ))
        .await
        .expect_err("a case variant of a taken address is taken");
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn get_user_returns_the_created_user() {
    let mut app = spawn_app().await;
    let created = app.create_user("ada@example.com", "Ada").await;
    let token = app.token_for(&created);
    let got = app
        .users
        .get_user(with_token(
            pb::GetUserRequest {
                id: created.id.clone(),
            },
            &token,
        ))
        .await
        .expect("user is found")
        .into_inner()
        .user;
    assert_eq!(got, Some(created));
}

#[tokio::test]
async fn get_user_unknown_is_not_found_and_malformed_is_invalid() {
    let mut app = spawn_app().await;
    let token = app.admin_token();
    let unknown = app
        .users
        .get_user(with_token(
            pb::GetUserRequest {
                id: uuid::Uuid::now_v7().to_string(),
            },
            &token,
        ))
        .await
        .expect_err("unknown id");
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed = app
        .users
        .get_user(with_token(pb::GetUserRequest { id: "42".into() }, &token))
        .await
        .expect_err("malformed id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&malformed), ["id"]);
}

#[tokio::test]
async fn list_users_walks_250_users_with_no_duplicate_and_no_gap() {
    let mut app = spawn_app().await;
    let token = app.admin_token();
    let mut created = HashSet::new();
    for i in 0..250 {
        created.insert(
            app.create_user(&format!("user{i}@example.com"), &format!("User {i}"))
                .await
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .users
            .list_users(with_token(
                pb::ListUsersRequest {
                    page_size: 7,
                    page_token: page_token.clone(),
                },
                &token,
            ))
            .await
            .expect("page is listed")
            .into_inner();
        pages += 1;
        assert!(page.users.len() <= 7);
        seen.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 250_usize.div_ceil(7));
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), 250, "no duplicates");
    assert_eq!(unique, created, "no gaps");

    // 0 means the default page size (50); above the maximum is coerced, not refused.
    let default_page = app
        .users
        .list_users(with_token(
            pb::ListUsersRequest {
                page_size: 0,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .expect("default page")
        .into_inner();
    assert_eq!(default_page.users.len(), 50);
    assert!(!default_page.next_page_token.is_empty());
    let huge_page = app
        .users
        .list_users(with_token(
            pb::ListUsersRequest {
                page_size: i32::MAX,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .expect("huge page size is coerced")
        .into_inner();
    assert_eq!(huge_page.users.len(), 250);
    assert!(
        huge_page.next_page_token.is_empty(),
        "last page has no token"
    );
}

#[tokio::test]
async fn list_users_rejects_negative_page_size_and_tampered_tokens() {
    let mut app = spawn_app().await;
    let token = app.admin_token();
    for i in 0..3 {
        app.create_user(&format!("u{i}@example.com"), "U").await;
    }
    let negative = app
        .users
        .list_users(with_token(
            pb::ListUsersRequest {
                page_size: -1,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .expect_err("negative page size");
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&negative), ["page_size"]);

    let page_token = app
        .users
        .list_users(with_token(
            pb::ListUsersRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .expect("first page")
        .into_inner()
        .next_page_token;
    // Flip one character of the token; keep it valid base64url.
    let mut chars: Vec<char> = page_token.chars().collect();
    chars[2] = if chars[2] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    for bad in [tampered, "forged".to_owned(), format!("{page_token}x")] {
        let status = app
            .users
            .list_users(with_token(
                pb::ListUsersRequest {
                    page_size: 1,
                    page_token: bad.clone(),
                },
                &token,
            ))
            .await
            .expect_err("tampered token");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(violated_fields(&status), ["page_token"]);
    }
}

#[tokio::test]
async fn a_page_token_is_good_only_for_the_admin_it_was_issued_to() {
    let mut app = spawn_app().await;
    for i in 0..3 {
        app.create_user(&format!("u{i}@example.com"), "U").await;
    }
    let list = |page_token: &str, token: &str| {
        with_token(
            pb::ListUsersRequest {
                page_size: 1,
                page_token: page_token.to_owned(),
            },
            token,
        )
    };
    let (alice, bob) = (app.admin_token(), app.admin_token());
    let page_token = app
        .users
        .list_users(list("", &alice))
        .await
        .expect("first page")
        .into_inner()
        .next_page_token;
    let own = app.users.list_users(list(&page_token, &alice)).await;
    assert!(own.is_ok(), "{own:?}");
    let foreign = app
        .users
        .list_users(list(&page_token, &bob))
        .await
        .expect_err("another admin's token");
    assert_eq!(foreign.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&foreign), ["page_token"]);
}

#[tokio::test]
async fn update_user_changes_only_the_masked_fields() {
    let mut app = spawn_app().await;
    let created = app.create_user("ada@example.com", "Ada").await;
    let token = app.token_for(&created);
    let updated = app
        .users
        .update_user(with_token(
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: created.id.clone(),
                    email: "ignored@example.com".into(),
                    display_name: "Ada Lovelace".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            &token,
        ))
        .await
        .expect("update succeeds")
        .into_inner()
        .user
        .expect("user returned");
    assert_eq!(updated.display_name, "Ada Lovelace");
    assert_eq!(
        updated.email, "ada@example.com",
        "email was not in the mask"
    );
    assert_eq!(updated.create_time, created.create_time);
    let instant = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(instant(&updated.update_time) >= instant(&created.update_time));

    // No mask: every non-empty updatable field is updated (AIP-134); the address is kept
    // as entered. Then a user may change only the case of their own address.
    for email in ["ADA@Lovelace.ORG", "ada@lovelace.org"] {
        let updated = app
            .users
            .update_user(with_token(email_update(&created.id, email), &token))
            .await
            .expect("implied mask update succeeds")
            .into_inner()
            .user
            .expect("user returned");
        assert_eq!(updated.email, email);
        assert_eq!(updated.display_name, "Ada Lovelace");
    }
}

/// An UpdateUser of `id`'s email to `email` with no mask (the mask is implied).
fn email_update(id: &str, email: &str) -> pb::UpdateUserRequest {
    pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.to_owned(),
            email: email.to_owned(),
            ..Default::default()
        }),
        update_mask: None,
    }
}

#[tokio::test]
async fn update_mask_with_too_many_paths_is_invalid() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let token = app.token_for(&ada);
    let request = |paths: usize| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: ada.id.clone(),
            display_name: "Ada Lovelace".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".to_owned(); paths],
        }),
    };
    app.users
        .update_user(with_token(
            request(user_service::grpc::MAX_UPDATE_MASK_PATHS),
            &token,
        ))
        .await
        .expect("the most paths allowed are accepted");
    let status = app
        .users
        .update_user(with_token(
            request(user_service::grpc::MAX_UPDATE_MASK_PATHS + 1),
            &token,
        ))
        .await
        .expect_err("one path more is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["update_mask"]);
    // One violation for the whole mask, not one per path.
    let huge = app
        .users
        .update_user(with_token(request(100_000), &token))
        .await
        .expect_err("a huge mask is refused");
    assert_eq!(violated_fields(&huge), ["update_mask"]);
}

#[tokio::test]
async fn update_user_errors_have_their_codes() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let token = app.token_for(&ada);
    app.create_user("grace@example.com", "Grace").await;
    let request = |id: &str, email: &str, paths: &[&str]| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.to_owned(),
            email: email.to_owned(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };

    let taken = app
        .users
        .update_user(with_token(
            request(&ada.id, "grace@example.com", &["email"]),
            &token,
        ))
        .await;
    assert_eq!(
        taken.map(drop).map_err(|s| s.code()),
        Err(Code::AlreadyExists)
    );

    let unknown_path = app
        .users
        .update_user(with_token(request(&ada.id, "", &["password_hash"]), &token))
        .await;
    let status = unknown_path.expect_err("unknown path");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["update_mask"]);

    let invalid = app
        .users
        .update_user(with_token(request(&ada.id, "nope", &["email"]), &token))
        .await;
    let status = invalid.expect_err("invalid email");
    assert_eq!(violated_fields(&status), ["user.email"]);

    // A valid token of a user that does not exist (any more).
    let ghost = uuid::Uuid::now_v7().to_string();
    let ghost_token = app.issuer.user_token(&ghost, &[]);
    let missing = app
        .users
        .update_user(with_token(
            request(&ghost, "x@example.com", &["email"]),
            &ghost_token,
        ))
        .await;
    assert_eq!(missing.map(drop).map_err(|s| s.code()), Err(Code::NotFound));

    let no_user = app
        .users
        .update_user(with_token(
            pb::UpdateUserRequest {
                user: None,
                update_mask: None,
            },
            &token,
        ))
        .await;
    assert_eq!(
        no_user.map(drop).map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );
}

#[tokio::test]
async fn delete_user_removes_it_once() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let token = app.token_for(&ada);
    app.users
        .delete_user(with_token(
            pb::DeleteUserRequest { id: ada.id.clone() },
            &token,
        ))
        .await
        .expect("first delete succeeds");
    let get = app
        .users
        .get_user(with_token(
            pb::GetUserRequest { id: ada.id.clone() },
            &token,
        ))
        .await;
    assert_eq!(get.map(drop).map_err(|s| s.code()), Err(Code::NotFound));
    let again = app
        .users
        .delete_user(with_token(pb::DeleteUserRequest { id: ada.id }, &token))
        .await;
    assert_eq!(again.map(drop).map_err(|s| s.code()), Err(Code::NotFound));
    // The email is free again.
    app.create_user("ada@example.com", "Ada again").await;
}
