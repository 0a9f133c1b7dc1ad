//! The binary's management commands, run by an operator with the same config as `serve`
//! (the way Django's `createsuperuser` is run): `user-service admin grant EMAIL` gives the
//! account with that address the admin role, `user-service admin revoke EMAIL` takes it
//! away. This is how the first admin is made; after that, admins can use the
//! `GrantRole`/`RevokeRole` RPCs. Addresses are compared regardless of case.
//!
//! The platform opens and migrates the database first (see
//! [`trellis_platform::Commands`]); the service itself may be running at the same time.

use std::io::BufRead as _;

use sea_orm::DatabaseConnection;
use trellis_platform::BuildError;
use trellis_platform::outbox::OutboxWaker;
use trellis_platform::validation::FieldViolation;

use crate::Config;
use crate::domain::{PasswordHasher, Role, RoleChange, User, UserError, UserRepository, Users};
use crate::storage::SeaOrmUserRepository;

/// The user service's own subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Grant or revoke the admin role of an account.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// `admin grant` and `admin revoke`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AdminCommand {
    /// Grant the admin role to the account with EMAIL (a no-op when it has it).
    Grant {
        /// The account's email address, in any case.
        email: String,
        /// When no account has EMAIL, create it first, with the password read from the
        /// first line of standard input (never from the command line, where other users
        /// of the machine could read it). A welcome notification is sent once the
        /// service runs.
        #[arg(long)]
        create: bool,
        /// The display name of an account that `--create` makes.
        #[arg(long, default_value = "Admin", requires = "create")]
        display_name: String,
    },
    /// Revoke the admin role from the account with EMAIL (a no-op when it lacks it).
    /// Access tokens already issued keep the role until they expire; refreshing them
    /// drops it.
    Revoke {
        /// The account's email address, in any case.
        email: String,
    },
}

/// Why a management command failed; its message tells the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No account has the address.
    #[error(
        "no account has the email address {0}: sign it up first \
         (trellis.user.v1.UserService/CreateUser), or run `user-service admin grant --create {0}` \
         with the account's password on standard input"
    )]
    NoSuchAccount(String),
    /// An argument (or the password read for `--create`) broke a field rule.
    #[error("{}", describe(.0))]
    Invalid(Vec<FieldViolation>),
    /// The password for `--create` could not be read from standard input.
    #[error("reading the password from standard input failed")]
    PasswordInput(#[source] std::io::Error),
    /// Another user operation failed (e.g. the address was taken meanwhile).
    #[error(transparent)]
    User(UserError),
}

impl From<UserError> for AdminError {
    fn from(err: UserError) -> Self {
        match err {
            UserError::Invalid(violations) => AdminError::Invalid(violations),
            other => AdminError::User(other),
        }
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    let each: Vec<String> = violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect();
    each.join("; ")
}

impl AdminCommand {
    /// Runs the command over `users`; `password` is asked only when `--create` has to
    /// create the account. Returns the line to show the operator.
    ///
    /// # Errors
    /// [`AdminError::NoSuchAccount`] when no account has the address (and `--create` is
    /// not given); [`AdminError::Invalid`] for a malformed address or password;
    /// [`AdminError::User`] when storage fails.
    pub async fn execute<R: UserRepository>(
        self,
        users: &Users<R>,
        password: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<String, AdminError> {
        match self {
            AdminCommand::Grant {
                email,
                create,
                display_name,
            } => {
                let (user, created) = match users.find_by_email(&email).await {
                    Ok(user) => (user, false),
                    Err(UserError::NotFound) if create => {
                        let password = password().map_err(AdminError::PasswordInput)?;
                        let user = users.create(&email, &display_name, &password).await?;
                        (user, true)
                    }
                    Err(UserError::NotFound) => return Err(AdminError::NoSuchAccount(email)),
                    Err(other) => return Err(other.into()),
                };
                let had = user.roles.contains(&Role::Admin);
                let user = users
                    .change_role(user.id, Role::Admin, RoleChange::Grant)
                    .await?;
                Ok(match (created, had) {
                    (true, _) => format!("created {} with the admin role", name(&user)),
                    (false, true) => format!("{} already has the admin role", name(&user)),
                    (false, false) => format!("granted the admin role to {}", name(&user)),
                })
            }
            AdminCommand::Revoke { email } => {
                let user = match users.find_by_email(&email).await {
                    Err(UserError::NotFound) => return Err(AdminError::NoSuchAccount(email)),
                    other => other?,
                };
                let had = user.roles.contains(&Role::Admin);
                let user = users
                    .change_role(user.id, Role::Admin, RoleChange::Revoke)
                    .await?;
                Ok(if had {
                    format!("revoked the admin role of {}", name(&user))
                } else {
                    format!("{} does not have the admin role", name(&user))
                })
            }
        }
    }
}

fn name(user: &User) -> String {
    format!("{} (user {})", user.email.as_str(), user.id)
}

/// The first line of standard input, without its line ending.
fn read_password() -> std::io::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}

impl trellis_platform::Commands<crate::Service> for Command {
    async fn run(self, config: Config, db: DatabaseConnection) -> Result<(), BuildError> {
        let Command::Admin(command) = self;
        let hasher = PasswordHasher::new(config.service.password_hashing)?;
        // Nothing dispatches in this process: a welcome notification `--create` enqueues
        // is delivered by the running service's outbox, which polls.
        let repository =
            SeaOrmUserRepository::new(db, crate::peers::account_events(OutboxWaker::default()));
        let report = command
            .execute(&Users::new(repository, hasher), read_password)
            .await?;
        println!("{report}");
        Ok(())
    }
}
