//! The management command `user-service admin grant|revoke EMAIL`: in-process over a
//! migrated database, and as the built binary against a running service's SQLite file.

use std::io::Write as _;
use std::process::{Command, Stdio};

use trellis_platform::data::{DatabaseConfig, connect};
use trellis_platform::outbox::OutboxWaker;
use trellis_platform::service::Launch;
use trellis_platform::testing::{TestServer, test_config};
use trellis_proto::user_v1 as pb;
use user_service::admin::{AdminCommand, AdminError};
use user_service::domain::password::HashCost;
use user_service::domain::{PasswordHasher, Role, Users};
use user_service::storage::SeaOrmUserRepository;
use user_service::storage::migration::Migrator;

use crate::helpers::{PASSWORD, roles_of, sign_up, with_token};

async fn users() -> Users<SeaOrmUserRepository> {
    let db = connect::<Migrator>(&DatabaseConfig::with_url("sqlite::memory:"))
        .await
        .expect("a migrated database");
    let hasher = PasswordHasher::new(HashCost::default()).expect("hasher");
    Users::new(
        SeaOrmUserRepository::new(
            db,
            user_service::peers::account_events(OutboxWaker::default()),
        ),
        hasher,
    )
}

fn grant(email: &str) -> AdminCommand {
    AdminCommand::Grant {
        email: email.to_owned(),
        create: false,
        display_name: "Admin".to_owned(),
    }
}

fn no_password() -> std::io::Result<String> {
    panic!("no password is asked for an existing account")
}

#[tokio::test]
async fn grant_and_revoke_change_the_role_of_the_account_in_any_case() {
    let users = users().await;
    let ada = users
        .create("Ada@Example.com", "Ada", PASSWORD)
        .await
        .expect("created");
    let report = grant("ADA@EXAMPLE.COM")
        .execute(&users, no_password)
        .await
        .expect("granted");
    assert!(
        report.starts_with("granted the admin role to Ada@Example.com"),
        "{report}"
    );
    let roles = || async { users.get(ada.id).await.expect("found").roles };
    assert!(roles().await.contains(&Role::Admin));
    let again = grant("ada@example.com")
        .execute(&users, no_password)
        .await
        .expect("granted again");
    assert!(again.contains("already has the admin role"), "{again}");

    let revoke = AdminCommand::Revoke {
        email: "ada@example.com".to_owned(),
    };
    let report = revoke
        .clone()
        .execute(&users, no_password)
        .await
        .expect("revoked");
    assert!(report.starts_with("revoked the admin role"), "{report}");
    assert!(roles().await.is_empty());
    let again = revoke.execute(&users, no_password).await.expect("no-op");
    assert!(again.contains("does not have the admin role"), "{again}");
}

#[tokio::test]
async fn grant_to_an_unknown_address_fails_and_says_how_to_create_the_account() {
    let users = users().await;
    let err = grant("nobody@example.com")
        .execute(&users, no_password)
        .await
        .expect_err("no such account");
    assert!(matches!(err, AdminError::NoSuchAccount(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("CreateUser"), "{message}");
    assert!(message.contains("--create"), "{message}");

    let err = grant("not an address")
        .execute(&users, no_password)
        .await
        .expect_err("malformed");
    assert!(matches!(err, AdminError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn grant_with_create_makes_the_account_with_the_password_given() {
    let users = users().await;
    let create = |password: &'static str| {
        AdminCommand::Grant {
            email: "admin@example.com".to_owned(),
            create: true,
            display_name: "Admin".to_owned(),
        }
        .execute(&users, move || Ok(password.to_owned()))
    };
    let err = create("short")
        .await
        .expect_err("a weak password is refused");
    assert!(err.to_string().contains("password"), "{err}");

    let report = create(PASSWORD).await.expect("created");
    assert!(report.starts_with("created admin@example.com"), "{report}");
    let admin = users
        .verify_credentials("ADMIN@example.com", PASSWORD)
        .await
        .expect("checked")
        .expect("the password given is the account's");
    assert!(admin.roles.contains(&Role::Admin));
    // Once it exists, --create only grants.
    let report = create("never read").await.expect("granted");
    assert!(report.contains("already has the admin role"), "{report}");
}

#[tokio::test]
async fn the_binary_grants_the_admin_role_in_a_running_services_database() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("user.db").display());
    let issuer = trellis_platform::testing::TestIssuer::new();
    let mut config = test_config::<user_service::Service>();
    config.database = DatabaseConfig::with_url(url.clone());
    let server =
        TestServer::start(Launch::new(config).key_source(std::sync::Arc::new(issuer.key_source())))
            .await;
    let mut client = pb::user_service_client::UserServiceClient::new(server.channel.clone());
    let ada = sign_up(&mut client, "ada@example.com", "Ada").await;

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_user-service"))
            .args(args)
            .env("TRELLIS_USER__DATABASE__URL", &url)
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs")
    };
    let granted = run(&["admin", "grant", "ADA@example.com"]);
    assert!(granted.status.success(), "{granted:?}");
    let stdout = String::from_utf8_lossy(&granted.stdout);
    assert!(
        stdout.contains("granted the admin role to ada@example.com"),
        "{stdout}"
    );

    let token = issuer.user_token(&ada.id, &[]);
    assert_eq!(roles_of(&mut client, &ada.id, &token).await, ["admin"]);

    // --create reads the new account's password from standard input, as `cargo xtask up`
    // passes it.
    let mut create = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .args(["admin", "grant", "--create", "root@example.com"])
        .env("TRELLIS_USER__DATABASE__URL", &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    create
        .stdin
        .take()
        .expect("a pipe")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("the password is passed");
    let created = create.wait_with_output().expect("the binary ends");
    assert!(created.status.success(), "{created:?}");
    let verified =
        pb::user_internal_service_client::UserInternalServiceClient::new(server.channel.clone())
            .verify_credentials(with_token(
                pb::VerifyCredentialsRequest {
                    email: "root@example.com".into(),
                    password: PASSWORD.into(),
                },
                &issuer.service_token("auth", "user"),
            ))
            .await
            .expect("checked")
            .into_inner()
            .user
            .map(|u| u.roles);
    assert_eq!(verified, Some(vec!["admin".to_owned()]));

    let missing = run(&["admin", "grant", "nobody@example.com"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("no account has the email address nobody@example.com"),
        "{stderr}"
    );
    server.stop().await;
}
