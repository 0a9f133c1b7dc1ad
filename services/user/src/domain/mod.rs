//! The user domain: what a user is, the rules its fields follow, and the operations on
//! users. No gRPC and no SQL here: storage is reached through [`UserRepository`], which
//! the storage layer implements.

pub mod password;
pub mod role;
pub mod validation;

use std::collections::BTreeSet;
use std::future::Future;

use chrono::{DateTime, Utc};
use trellis_platform::data::now;
use trellis_platform::validation::FieldViolation;
use uuid::Uuid;

pub use password::{PasswordHash, PasswordHasher};
pub use role::Role;
pub use validation::{DisplayName, Email, Password};

/// A user as the domain sees it. Holds no password material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// A UUIDv7: time-ordered, so ordering by id lists users oldest first.
    pub id: Uuid,
    /// Email address as entered, unique regardless of case (see [`Email`]).
    pub email: Email,
    /// See [`DisplayName`].
    pub display_name: DisplayName,
    /// The roles granted to the user (see [`Role`]).
    pub roles: BTreeSet<Role>,
    /// When the user was created.
    pub create_time: DateTime<Utc>,
    /// When the user was last changed.
    pub update_time: DateTime<Utc>,
}

/// A user with their stored password hash, as loaded for a credentials check.
#[derive(Debug, Clone)]
pub struct UserWithCredentials {
    /// The user.
    pub user: User,
    /// Their argon2id hash.
    pub password_hash: PasswordHash,
}

/// Changes to apply to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    /// New email address.
    pub email: Option<Email>,
    /// New display name.
    pub display_name: Option<DisplayName>,
}

/// Whether a role is being granted or revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// The user gets the role (a no-op when they have it).
    Grant,
    /// The user loses the role (a no-op when they lack it).
    Revoke,
}

/// One page of users, oldest first.
#[derive(Debug, Clone)]
pub struct UserPage {
    /// The users of this page.
    pub users: Vec<User>,
    /// The id to continue after, when more users follow.
    pub next_after: Option<Uuid>,
}

/// Everything that can go wrong in a user operation.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Input broke one or more field rules.
    #[error("invalid input")]
    Invalid(Vec<FieldViolation>),
    /// No user has this id.
    #[error("user not found")]
    NotFound,
    /// Another user already has this email address (compared regardless of case).
    #[error("email address is already registered")]
    EmailTaken,
    /// Too much password hashing is in progress (see [`password`]): retry after
    /// `retry_after`.
    #[error("too many password checks in progress")]
    Overloaded {
        /// How long the caller should wait before retrying.
        retry_after: std::time::Duration,
    },
    /// Anything the caller cannot act on (database down, hashing failed).
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// What must happen to other services because an account changed, stated as plain data.
///
/// The operations of [`Users`] hand these to the repository with the change; storage
/// enqueues them in the same transaction (the platform's outbox delivers each at least
/// once), and the service's `peers` module says which call each becomes. Nothing here
/// knows a wire format or a peer's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    /// A new account: its user is greeted with a notification.
    Welcome {
        /// The new user.
        user_id: Uuid,
        /// Their display name, for the greeting.
        display_name: DisplayName,
    },
    /// The account is gone: every refresh token of its user must be revoked, so no
    /// session outlives it.
    RevokeTokens {
        /// The deleted user.
        user_id: Uuid,
    },
}

/// Storage of users, implemented by the storage layer.
pub trait UserRepository: Send + Sync + 'static {
    /// Inserts a new user with their roles and, in the same transaction, enqueues
    /// `events` for delivery (the outbox retries each until its peer answers): the user
    /// and their events commit together or not at all.
    ///
    /// # Errors
    /// [`UserError::EmailTaken`] when the email exists; [`UserError::Unexpected`] otherwise.
    fn insert(
        &self,
        user: &User,
        password_hash: &PasswordHash,
        events: &[AccountEvent],
    ) -> impl Future<Output = Result<(), UserError>> + Send;
    /// Loads a user with their roles by id; `None` when absent.
    fn get(&self, id: Uuid) -> impl Future<Output = Result<Option<User>, UserError>> + Send;
    /// Loads a user with their roles by email, compared on [`Email::canonical`]; `None`
    /// when absent.
    fn find_by_email(
        &self,
        email: &Email,
    ) -> impl Future<Output = Result<Option<User>, UserError>> + Send;
    /// Loads a user and their hash by email, compared on [`Email::canonical`]; `None`
    /// when absent.
    fn get_credentials(
        &self,
        email: &Email,
    ) -> impl Future<Output = Result<Option<UserWithCredentials>, UserError>> + Send;
    /// Lists up to `limit` users with an id greater than `after`, in id order.
    fn list(
        &self,
        after: Option<Uuid>,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<User>, UserError>> + Send;
    /// Applies `changes` and sets `update_time`; returns the updated user, `None` when absent.
    ///
    /// # Errors
    /// [`UserError::EmailTaken`] when the new email belongs to another user.
    fn update(
        &self,
        id: Uuid,
        changes: &UserChanges,
        update_time: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<User>, UserError>> + Send;
    /// Deletes a user and, in the same transaction, enqueues `events` for delivery (the
    /// outbox retries each until its peer answers); `false`, with nothing enqueued, when
    /// there was no such user.
    fn delete(
        &self,
        id: Uuid,
        events: &[AccountEvent],
    ) -> impl Future<Output = Result<bool, UserError>> + Send;
    /// Grants or revokes `role`, setting `update_time` when that changed anything;
    /// returns the user with their roles after the change, `None` when absent.
    fn change_role(
        &self,
        id: Uuid,
        role: Role,
        change: RoleChange,
        update_time: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<User>, UserError>> + Send;
}

/// The user operations, over a repository and a password hasher.
#[derive(Debug)]
pub struct Users<R> {
    repository: R,
    hasher: PasswordHasher,
}

impl<R: UserRepository> Users<R> {
    /// The operations over `repository`, hashing with `hasher`.
    pub fn new(repository: R, hasher: PasswordHasher) -> Self {
        Self { repository, hasher }
    }

    /// Creates a user from unvalidated input.
    ///
    /// # Errors
    /// [`UserError::Invalid`] listing every broken field rule; [`UserError::EmailTaken`].
    pub async fn create(
        &self,
        email: &str,
        display_name: &str,
        password: &str,
    ) -> Result<User, UserError> {
        let mut violations = Vec::new();
        let email = collect(Email::parse("email", email), &mut violations);
        let display_name = collect(
            DisplayName::parse("display_name", display_name),
            &mut violations,
        );
        let password = collect(Password::parse("password", password), &mut violations);
        let (Some(email), Some(display_name), Some(password)) = (email, display_name, password)
        else {
            return Err(UserError::Invalid(violations));
        };
        let password_hash = self.hasher.hash(password).await?;
        let now = now();
        let user = User {
            id: Uuid::now_v7(),
            email,
            display_name,
            roles: BTreeSet::new(),
            create_time: now,
            update_time: now,
        };
        let welcome = AccountEvent::Welcome {
            user_id: user.id,
            display_name: user.display_name.clone(),
        };
        self.repository
            .insert(&user, &password_hash, &[welcome])
            .await?;
        Ok(user)
    }

    /// Returns the user with `id`.
    ///
    /// # Errors
    /// [`UserError::NotFound`].
    pub async fn get(&self, id: Uuid) -> Result<User, UserError> {
        self.repository.get(id).await?.ok_or(UserError::NotFound)
    }

    /// Returns up to `page_size` users after `after` (exclusive), oldest first.
    ///
    /// # Errors
    /// [`UserError::Unexpected`] when storage fails.
    pub async fn list(&self, after: Option<Uuid>, page_size: u32) -> Result<UserPage, UserError> {
        let page_size = u64::from(page_size.max(1));
        // One extra row tells whether another page follows without a second query.
        let mut users = self.repository.list(after, page_size + 1).await?;
        let more = users.len() as u64 > page_size;
        users.truncate(page_size as usize);
        let next_after = if more {
            users.last().map(|u| u.id)
        } else {
            None
        };
        Ok(UserPage { users, next_after })
    }

    /// Applies `changes` to the user with `id`.
    ///
    /// # Errors
    /// [`UserError::NotFound`]; [`UserError::EmailTaken`].
    pub async fn update(&self, id: Uuid, changes: UserChanges) -> Result<User, UserError> {
        if changes == UserChanges::default() {
            return self.get(id).await;
        }
        self.repository
            .update(id, &changes, now())
            .await?
            .ok_or(UserError::NotFound)
    }

    /// Deletes the user with `id` and has their refresh tokens revoked
    /// ([`AccountEvent::RevokeTokens`], enqueued with the deletion).
    ///
    /// # Errors
    /// [`UserError::NotFound`].
    pub async fn delete(&self, id: Uuid) -> Result<(), UserError> {
        let revoke = AccountEvent::RevokeTokens { user_id: id };
        if self.repository.delete(id, &[revoke]).await? {
            Ok(())
        } else {
            Err(UserError::NotFound)
        }
    }

    /// Returns the user with the email `email` (compared regardless of case).
    ///
    /// # Errors
    /// [`UserError::Invalid`] when `email` is not an address; [`UserError::NotFound`].
    pub async fn find_by_email(&self, email: &str) -> Result<User, UserError> {
        let email = Email::parse("email", email).map_err(|v| UserError::Invalid(vec![v]))?;
        self.repository
            .find_by_email(&email)
            .await?
            .ok_or(UserError::NotFound)
    }

    /// Grants or revokes `role` for the user with `id`; idempotent. Returns the user
    /// with their roles after the change.
    ///
    /// # Errors
    /// [`UserError::NotFound`].
    pub async fn change_role(
        &self,
        id: Uuid,
        role: Role,
        change: RoleChange,
    ) -> Result<User, UserError> {
        self.repository
            .change_role(id, role, change, now())
            .await?
            .ok_or(UserError::NotFound)
    }

    /// Returns the user whose credentials these are, `None` when they match no user.
    ///
    /// An unknown email, a malformed one and a wrong password all give `None`, and an
    /// unknown email costs a full hash verification (against a dummy hash), so neither
    /// the answer nor its timing tells whether an account exists (OWASP Authentication
    /// Cheat Sheet). A mismatch is an answer, not an error: an error is always a fault.
    ///
    /// # Errors
    /// [`UserError::Unexpected`] when storage or hashing fails.
    pub async fn verify_credentials(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<User>, UserError> {
        let found = match Email::parse("email", email) {
            Ok(email) => self.repository.get_credentials(&email).await?,
            Err(_) => None,
        };
        match found {
            Some(found) => {
                let matches = self.hasher.verify(password, found.password_hash).await?;
                Ok(matches.then_some(found.user))
            }
            None => {
                self.hasher.verify_dummy(password).await?;
                Ok(None)
            }
        }
    }
}

/// Keeps `Ok` values and gathers errors, so one call reports every broken field.
fn collect<T>(
    result: Result<T, FieldViolation>,
    violations: &mut Vec<FieldViolation>,
) -> Option<T> {
    result.map_err(|v| violations.push(v)).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::password::HashCost;
    use super::*;

    /// A repository that keeps users in memory and records the events each change
    /// handed it.
    #[derive(Debug, Default)]
    struct RecordingRepository {
        users: Mutex<Vec<User>>,
        events: Mutex<Vec<AccountEvent>>,
    }

    impl RecordingRepository {
        fn events(&self) -> Vec<AccountEvent> {
            self.events.lock().map(|e| e.clone()).unwrap_or_default()
        }

        fn record(&self, events: &[AccountEvent]) {
            if let Ok(mut recorded) = self.events.lock() {
                recorded.extend_from_slice(events);
            }
        }

        fn find(&self, matches: impl Fn(&User) -> bool) -> Option<User> {
            let users = self.users.lock().ok()?;
            users.iter().find(|u| matches(u)).cloned()
        }
    }

    impl UserRepository for RecordingRepository {
        async fn insert(
            &self,
            user: &User,
            _password_hash: &PasswordHash,
            events: &[AccountEvent],
        ) -> Result<(), UserError> {
            if self
                .find(|u| u.email.canonical() == user.email.canonical())
                .is_some()
            {
                return Err(UserError::EmailTaken);
            }
            if let Ok(mut users) = self.users.lock() {
                users.push(user.clone());
            }
            self.record(events);
            Ok(())
        }

        async fn get(&self, id: Uuid) -> Result<Option<User>, UserError> {
            Ok(self.find(|u| u.id == id))
        }

        async fn find_by_email(&self, email: &Email) -> Result<Option<User>, UserError> {
            Ok(self.find(|u| u.email.canonical() == email.canonical()))
        }

        async fn get_credentials(
            &self,
            _email: &Email,
        ) -> Result<Option<UserWithCredentials>, UserError> {
            Ok(None)
        }

        async fn list(&self, _after: Option<Uuid>, _limit: u64) -> Result<Vec<User>, UserError> {
            Ok(Vec::new())
        }

        async fn update(
            &self,
            _id: Uuid,
            _changes: &UserChanges,
            _update_time: DateTime<Utc>,
        ) -> Result<Option<User>, UserError> {
            Ok(None)
        }

        async fn delete(&self, id: Uuid, events: &[AccountEvent]) -> Result<bool, UserError> {
            let Ok(mut users) = self.users.lock() else {
                return Ok(false);
            };
            let before = users.len();
            users.retain(|u| u.id != id);
            let deleted = users.len() < before;
            drop(users);
            if deleted {
                self.record(events);
            }
            Ok(deleted)
        }

        async fn change_role(
            &self,
            _id: Uuid,
            _role: Role,
            _change: RoleChange,
            _update_time: DateTime<Utc>,
        ) -> Result<Option<User>, UserError> {
            Ok(None)
        }
    }

    fn users() -> anyhow::Result<Users<RecordingRepository>> {
        let hasher = PasswordHasher::new(HashCost::default())?;
        Ok(Users::new(RecordingRepository::default(), hasher))
    }

    #[tokio::test]
    async fn sign_up_states_a_welcome_for_the_new_user_by_their_display_name() -> anyhow::Result<()>
    {
        let users = users()?;
        let user = users
            .create("ada@example.com", "Ada Lovelace", "correct horse battery")
            .await?;
        assert_eq!(
            users.repository.events(),
            vec![AccountEvent::Welcome {
                user_id: user.id,
                display_name: user.display_name.clone(),
            }]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_refused_sign_up_states_no_event() -> anyhow::Result<()> {
        let users = users()?;
        let invalid = users.create("not an address", "Ada", "short").await;
        assert!(matches!(invalid, Err(UserError::Invalid(_))), "{invalid:?}");
        users
            .create("ada@example.com", "Ada", "correct horse battery")
            .await?;
        let taken = users
            .create("ADA@example.com", "Ada again", "correct horse battery")
            .await;
        assert!(matches!(taken, Err(UserError::EmailTaken)), "{taken:?}");
        assert_eq!(users.repository.events().len(), 1, "only the first welcome");
        Ok(())
    }

    #[tokio::test]
    async fn deleting_a_user_states_the_revocation_of_their_tokens() -> anyhow::Result<()> {
        let users = users()?;
        let user = users
            .create("ada@example.com", "Ada", "correct horse battery")
            .await?;
        users.delete(user.id).await?;
        assert_eq!(
            users.repository.events().last(),
            Some(&AccountEvent::RevokeTokens { user_id: user.id })
        );
        Ok(())
    }

    #[tokio::test]
    async fn deleting_an_unknown_user_is_not_found_and_revokes_nothing() -> anyhow::Result<()> {
        let users = users()?;
        let result = users.delete(Uuid::now_v7()).await;
        assert!(matches!(result, Err(UserError::NotFound)), "{result:?}");
        assert_eq!(users.repository.events(), Vec::new());
        Ok(())
    }
}
