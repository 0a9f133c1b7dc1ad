//! Trellis's user service: user accounts and credentials behind `trellis.user.v1`.
//!
//! Layers, each testable without the one above: [`grpc`] (wire types and statuses),
//! [`domain`] (rules, no gRPC, no SQL; what other services must do is stated as
//! [`domain::AccountEvent`]s), [`storage`] (sea-orm; enqueues those events with the change)
//! and [`peers`] (the calls out: which peer call each event becomes). [`Service`] wires
//! them onto the platform; [`admin`] holds the binary's management commands
//! (`user-service admin grant`).

pub mod admin;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod peers;
pub mod sign_up;
pub mod storage;

use trellis_platform::auth::{Access, AccessPolicy, RateClass};
use trellis_platform::{BuildError, Context, ServiceInfo};
use trellis_proto::user_v1::user_internal_service_server::UserInternalServiceServer;
use trellis_proto::user_v1::user_service_server::UserServiceServer;

use domain::Users;
use grpc::UserHandlers;
use sign_up::SignUpLimiter;
use storage::SeaOrmUserRepository;

/// The user service, as the platform runs it: `trellis_platform::run::<Service>()`.
#[derive(Debug)]
pub struct Service;

/// Every setting of the user service: the platform's sections (default port 50051,
/// database `sqlite://.data/user.db?mode=rwc`, peers `auth` and `notification`) and
/// [`config::Settings`], from `TRELLIS_USER__*`.
pub type Config = trellis_platform::Config<Service>;

impl trellis_platform::Service for Service {
    const INFO: ServiceInfo = ServiceInfo {
        name: "user",
        env_prefix: "TRELLIS_USER",
    };
    const DEFAULT_PORT: u16 = 50051;
    /// `auth` (keys, credentials), `notification` (welcome notices, through the outbox).
    const DEFAULT_PEERS: &'static [(&'static str, &'static str)] = &[
        ("auth", "http://127.0.0.1:50052"),
        ("notification", "http://127.0.0.1:50053"),
    ];
    type Settings = config::Settings;
    type Migrator = storage::migration::Migrator;

    /// Sign-up is public, the internal service needs a service identity, everything else
    /// a valid token (handlers then check self/admin). Rate classes: sign-up is a
    /// sign-in (it hashes a password), per client address; reads per caller get a
    /// larger budget than writes (the other methods, [`RateClass::WRITE`]); the internal
    /// service is not limited (auth calls it for every sign-in).
    fn access_policy() -> AccessPolicy {
        AccessPolicy::new(Access::Authenticated)
            .method("trellis.user.v1.UserService/CreateUser", Access::Public)
            .rate("trellis.user.v1.UserService/CreateUser", RateClass::SIGN_IN)
            .rate("trellis.user.v1.UserService/GetUser", RateClass::READ)
            .rate("trellis.user.v1.UserService/ListUsers", RateClass::READ)
            // Only auth checks credentials and looks users up (issue 8, item 3).
            .internal(
                "trellis.user.v1.UserInternalService/VerifyCredentials",
                &["auth"],
            )
            .internal("trellis.user.v1.UserInternalService/LookupUser", &["auth"])
            // Any other internal method admits no one until it declares its callers.
            .internal("trellis.user.v1.UserInternalService", &[])
    }

    async fn build(ctx: &mut Context<Self>) -> Result<(), BuildError> {
        let hasher = ctx.settings().password_hasher()?;
        let sign_up = SignUpLimiter::new(ctx.settings().sign_up_rate);
        let repository =
            SeaOrmUserRepository::new(ctx.db().clone(), peers::account_events(ctx.outbox()));
        let handlers = UserHandlers::new(Users::new(repository, hasher), ctx.page_tokens())
            .with_sign_up_limiter(sign_up);
        ctx.add_service(UserServiceServer::new(handlers.clone()));
        ctx.add_service(UserInternalServiceServer::new(handlers));
        Ok(())
    }
}
