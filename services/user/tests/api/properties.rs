//! Property tests (proptest) for what a client reaches without help: email parsing and
//! normalisation, and `UpdateUser` field masks. Arbitrary input never panics and never
//! yields INTERNAL.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;
use trellis_proto::user_v1 as pb;
use user_service::domain::Email;
use user_service::domain::validation::EMAIL_MAX_BYTES;

use crate::helpers::{spawn_app, with_token};

/// Cases per property that goes through the server: each is one or two RPCs.
const RPC_CASES: u32 = 64;

/// Strings a client might send as an email: anything, or something address-shaped with
/// odd case, whitespace and Unicode.
fn email_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t]{0,2}[a-zA-Z0-9.+_%-]{0,20}@[a-zA-Z0-9.-]{0,20}[ \t]{0,2}",
        "\\PC{0,12}@\\PC{0,12}",
        "[a-z]{1,8}@[a-zA-Z]{1,8}\\.[a-zA-Z]{2,3}",
    ]
}

proptest! {
    #[test]
    fn email_parsing_never_panics_and_its_normal_form_is_a_fixed_point(raw in email_like()) {
        if let Ok(email) = Email::parse("email", &raw) {
            let normal = email.as_str();
            prop_assert!(normal.len() <= EMAIL_MAX_BYTES, "{normal:?}");
            prop_assert_eq!(normal, normal.trim());
            let again = Email::parse("email", normal);
            prop_assert_eq!(again.as_ref().map(Email::as_str).ok(), Some(normal));
        }
    }

    #[test]
    fn an_addresses_case_and_surrounding_space_never_make_a_different_account(
        local in "[a-z0-9]{1,10}",
        domain in "[a-z]{1,10}\\.[a-z]{2,3}",
        upper in any::<u64>(),
    ) {
        let plain = format!("{local}@{domain}");
        // Upper-case the letters picked by the bits of `upper`, anywhere in the address,
        // and pad: the account (the canonical form) is the same, the address as entered
        // is kept.
        let shouted: String = plain
            .chars()
            .enumerate()
            .map(|(i, c)| if upper >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect();
        let variant = format!("  {shouted}\t");
        let a = Email::parse("email", &plain).map_err(|v| TestCaseError::fail(format!("{v:?}")))?;
        let b = Email::parse("email", &variant).map_err(|v| TestCaseError::fail(format!("{v:?}")))?;
        prop_assert_eq!(a.canonical(), b.canonical());
        prop_assert_eq!(b.as_str(), shouted.as_str());
    }
}

/// Runs `property` on `RPC_CASES` inputs from `strategy`, each inside the current runtime.
fn run_rpc_property<S: Strategy>(
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases: RPC_CASES,
        ..Config::default()
    });
    if let Err(err) = runner.run(&strategy, property) {
        panic!("{err}");
    }
}

/// Blocks on `future` from inside a multi-threaded runtime's test.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_with_any_email_and_name_never_answers_internal() {
    let app = spawn_app().await;
    run_rpc_property((email_like(), any::<String>()), |(email, name)| {
        let mut users = app.users.clone();
        let result = block_on(users.create_user(pb::CreateUserRequest {
            email,
            display_name: name,
            password: crate::helpers::PASSWORD.to_owned(),
        }));
        let code = result.map_or_else(|status| status.code(), |_| Code::Ok);
        prop_assert!(
            matches!(code, Code::Ok | Code::InvalidArgument | Code::AlreadyExists),
            "{code:?}"
        );
        Ok(())
    });
}

/// Field-mask paths a client might send: the real ones, output-only ones, `*`, and noise.
fn mask_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("email".to_owned()),
        Just("display_name".to_owned()),
        Just("*".to_owned()),
        Just("id".to_owned()),
        Just("create_time".to_owned()),
        Just("roles".to_owned()),
        Just(String::new()),
        any::<String>(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_user_with_any_mask_never_answers_internal_and_changes_only_masked_fields() {
    let mut app = spawn_app().await;
    let user = app.create_user("mask@example.com", "Mask").await;
    let token = app.token_for(&user);
    let inputs = (
        proptest::option::of(proptest::collection::vec(mask_path(), 0..6)),
        prop_oneof![Just(String::new()), email_like()],
        prop_oneof![Just(String::new()), any::<String>()],
    );
    run_rpc_property(inputs, |(paths, email, display_name)| {
        let mut users = app.users.clone();
        let before = block_on(users.get_user(with_token(
            pb::GetUserRequest {
                id: user.id.clone(),
            },
            &token,
        )))
        .map_err(|status| TestCaseError::fail(format!("{status:?}")))?
        .into_inner()
        .user
        .ok_or_else(|| TestCaseError::fail("no user"))?;
        let named = |field: &str| {
            paths
                .as_ref()
                .is_some_and(|paths| paths.iter().any(|path| path == field || path == "*"))
        };
        let masked_email = named("email");
        let masked_name = named("display_name");
        let request = pb::UpdateUserRequest {
            user: Some(pb::User {
                id: user.id.clone(),
                email,
                display_name,
                ..pb::User::default()
            }),
            update_mask: paths.map(|paths| prost_types::FieldMask { paths }),
        };
        let explicit = request
            .update_mask
            .as_ref()
            .is_some_and(|mask| !mask.paths.is_empty());
        match block_on(users.update_user(with_token(request, &token))) {
            Ok(response) => {
                let after = response
                    .into_inner()
                    .user
                    .ok_or_else(|| TestCaseError::fail("no user"))?;
                // With an explicit mask, a field outside it keeps its value.
                if explicit && !masked_email {
                    prop_assert_eq!(&after.email, &before.email);
                }
                if explicit && !masked_name {
                    prop_assert_eq!(&after.display_name, &before.display_name);
                }
                prop_assert_eq!(after.id, before.id);
                prop_assert_eq!(after.create_time, before.create_time);
            }
            Err(status) => prop_assert!(
                matches!(status.code(), Code::InvalidArgument | Code::AlreadyExists),
                "{status:?}"
            ),
        }
        Ok(())
    });
}
