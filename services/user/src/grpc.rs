//! The gRPC layer: decodes requests, converts between wire and domain types, and maps
//! domain errors to `tonic::Status` (in one place: `From<UserError> for Status`).

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};
use trellis_platform::auth::Principal;
use trellis_platform::pagination::{self, PageError, PageTokenCodec};
use trellis_platform::status::{
    FieldViolation, check_max_items, internal, invalid_argument, parse_id, resource_exhausted,
};
use trellis_proto::user_v1 as pb;
use uuid::Uuid;

use crate::domain::{
    DisplayName, Email, Role, RoleChange, User, UserChanges, UserError, UserRepository, Users,
};
use crate::sign_up::SignUpLimiter;

/// ListUsers page size when the request says 0 (AIP-158).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest ListUsers page; larger requests are coerced to it (AIP-158).
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Most paths in an UpdateUser `update_mask`; more are INVALID_ARGUMENT before any is
/// looked at (a user has two updatable fields, so ten leaves room for repeats and `*`
/// without letting one request carry an unbounded list).
pub const MAX_UPDATE_MASK_PATHS: usize = 10;
/// The scope page tokens are bound to.
const LIST_USERS_SCOPE: &str = "trellis.user.v1.UserService/ListUsers";

/// Handlers of `trellis.user.v1.UserService` and `UserInternalService`.
#[derive(Debug)]
pub struct UserHandlers<R> {
    users: Arc<Users<R>>,
    page_tokens: PageTokenCodec,
    sign_up: Arc<SignUpLimiter>,
}

impl<R> Clone for UserHandlers<R> {
    fn clone(&self) -> Self {
        Self {
            users: Arc::clone(&self.users),
            page_tokens: self.page_tokens.clone(),
            sign_up: Arc::clone(&self.sign_up),
        }
    }
}

impl<R: UserRepository> UserHandlers<R> {
    /// Handlers over the domain operations, signing page tokens with `page_tokens`.
    pub fn new(users: Users<R>, page_tokens: PageTokenCodec) -> Self {
        Self {
            users: Arc::new(users),
            page_tokens,
            sign_up: Arc::new(SignUpLimiter::disabled()),
        }
    }

    /// Limits `CreateUser` per client address with `limiter` (no limit unless set).
    #[must_use]
    pub fn with_sign_up_limiter(mut self, limiter: SignUpLimiter) -> Self {
        self.sign_up = Arc::new(limiter);
        self
    }
}

/// The cursor inside a ListUsers page token: the last id of the previous page.
#[derive(serde::Serialize, serde::Deserialize)]
struct ListCursor {
    after: Uuid,
}

#[tonic::async_trait]
impl<R: UserRepository> pb::user_service_server::UserService for UserHandlers<R> {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        // Every attempt that keeps the contract's field rules counts, before any hashing.
        // The client's address: behind a trusted proxy, the one it names.
        let source = trellis_platform::server::client_address(&request);
        if let Err(retry_after) = self.sign_up.check(source) {
            return Err(resource_exhausted(
                "too many sign-ups from this address; try again later",
                retry_after,
            ));
        }
        let request = request.into_inner();
        let user = self
            .users
            .create(&request.email, &request.display_name, &request.password)
            .await?;
        tracing::info!(user_id = %user.id, "user created");
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(to_proto(&user)),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let id = parse_id("id", &request.get_ref().id)?;
        authorize(&request, id, Permission::SelfOrAdmin)?;
        let user = self.users.get(id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(to_proto(&user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        // Page tokens are bound to the admin they were issued to.
        let caller = require_admin(&request, "listing users needs the admin role")?.subject;
        let request = request.into_inner();
        let page_size = pagination::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map_err(|err| page_error("page_size", &err))?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            let cursor: ListCursor = self
                .page_tokens
                .decode(LIST_USERS_SCOPE, &caller, &request.page_token)
                .map_err(|err| page_error("page_token", &err))?;
            Some(cursor.after)
        };
        let page = self.users.list(after, page_size).await?;
        let next_page_token = page
            .next_after
            .map(|after| {
                self.page_tokens
                    .encode(LIST_USERS_SCOPE, &caller, &ListCursor { after })
            })
            .unwrap_or_default();
        Ok(Response::new(pb::ListUsersResponse {
            users: page.users.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let caller = Principal::of(&request)?.clone();
        let request = request.into_inner();
        let Some(user) = request.user else {
            return Err(invalid_argument(&[FieldViolation::new(
                "user",
                "is required",
            )]));
        };
        let id = parse_id("user.id", &user.id)?;
        check(&caller, id, Permission::SelfOnly)?;
        let changes = changes_from_mask(&user, request.update_mask.as_ref())?;
        let user = self.users.update(id, changes).await?;
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(to_proto(&user)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let id = parse_id("id", &request.get_ref().id)?;
        authorize(&request, id, Permission::SelfOrAdmin)?;
        self.users.delete(id).await?;
        tracing::info!(user_id = %id, "user deleted");
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn grant_role(
        &self,
        request: Request<pb::GrantRoleRequest>,
    ) -> Result<Response<pb::GrantRoleResponse>, Status> {
        require_admin(&request, "granting roles needs the admin role")?;
        let request = request.into_inner();
        let (id, role) = role_request(&request.id, &request.role)?;
        let user = self.users.change_role(id, role, RoleChange::Grant).await?;
        tracing::info!(user_id = %id, role = role.as_str(), "role granted");
        Ok(Response::new(pb::GrantRoleResponse {
            user: Some(to_proto(&user)),
        }))
    }

    async fn revoke_role(
        &self,
        request: Request<pb::RevokeRoleRequest>,
    ) -> Result<Response<pb::RevokeRoleResponse>, Status> {
        let caller = require_admin(&request, "revoking roles needs the admin role")?;
        let request = request.into_inner();
        let (id, role) = role_request(&request.id, &request.role)?;
        // An admin cannot demote themselves, so as long as roles change only through this
        // API there is always an admin left; another admin, or an operator with
        // `user-service admin revoke`, can still remove the role.
        if role == Role::Admin && caller_id(&caller) == Some(id) {
            return Err(Status::failed_precondition(
                "an admin cannot revoke their own admin role; another admin or \
                 `user-service admin revoke` can",
            ));
        }
        let user = self.users.change_role(id, role, RoleChange::Revoke).await?;
        tracing::info!(user_id = %id, role = role.as_str(), "role revoked");
        Ok(Response::new(pb::RevokeRoleResponse {
            user: Some(to_proto(&user)),
        }))
    }
}

#[tonic::async_trait]
impl<R: UserRepository> pb::user_internal_service_server::UserInternalService for UserHandlers<R> {
    async fn verify_credentials(
        &self,
        request: Request<pb::VerifyCredentialsRequest>,
    ) -> Result<Response<pb::VerifyCredentialsResponse>, Status> {
        let request = request.into_inner();
        // A mismatch is an answer (`user` unset), so a status other than OK always means
        // the call itself failed and the caller charges no one's login throttle for it.
        let user = self
            .users
            .verify_credentials(&request.email, &request.password)
            .await?;
        Ok(Response::new(pb::VerifyCredentialsResponse {
            user: user.as_ref().map(to_proto),
        }))
    }

    async fn lookup_user(
        &self,
        request: Request<pb::LookupUserRequest>,
    ) -> Result<Response<pb::LookupUserResponse>, Status> {
        let id = parse_id("id", &request.get_ref().id)?;
        let user = self.users.get(id).await?;
        Ok(Response::new(pb::LookupUserResponse {
            user: Some(to_proto(&user)),
        }))
    }
}

/// Who may act on a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permission {
    /// The user themselves.
    SelfOnly,
    /// The user themselves or an admin.
    SelfOrAdmin,
}

/// Checks the request's caller against `permission` for the user `id`; checked before
/// the user is looked up, so a denial says nothing about whether `id` exists.
fn authorize<T>(request: &Request<T>, id: Uuid, permission: Permission) -> Result<(), Status> {
    check(Principal::of(request)?, id, permission)
}

/// The caller, when it holds the admin role; PERMISSION_DENIED with `denial` otherwise.
/// The role is read from the access token, so a revocation reaches a caller at their
/// next refresh (the auth service re-reads roles then).
fn require_admin<T>(request: &Request<T>, denial: &'static str) -> Result<Principal, Status> {
    let caller = Principal::of(request)?;
    if caller.is_admin() {
        Ok(caller.clone())
    } else {
        Err(Status::permission_denied(denial))
    }
}

/// The user id of `caller`, when it is a user.
fn caller_id(caller: &Principal) -> Option<Uuid> {
    caller.user_id().and_then(|own| Uuid::parse_str(own).ok())
}

/// The user id and role of a GrantRole/RevokeRole request, every bad field reported.
fn role_request(id: &str, role: &str) -> Result<(Uuid, Role), Status> {
    let id = trellis_platform::validation::uuid_field("id", id);
    let role = Role::parse("role", role);
    match (id, role) {
        (Ok(id), Ok(role)) => Ok((id, role)),
        (id, role) => {
            let violations: Vec<FieldViolation> =
                [id.err(), role.err()].into_iter().flatten().collect();
            Err(invalid_argument(&violations))
        }
    }
}

fn check(caller: &Principal, id: Uuid, permission: Permission) -> Result<(), Status> {
    let is_self = caller_id(caller) == Some(id);
    let allowed = is_self || (permission == Permission::SelfOrAdmin && caller.is_admin());
    if allowed {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "you may only act on your own user",
        ))
    }
}

/// The single mapping from domain errors to gRPC statuses.
impl From<UserError> for Status {
    fn from(err: UserError) -> Self {
        match err {
            UserError::Invalid(violations) => invalid_argument(&violations),
            UserError::NotFound => Status::not_found("user not found"),
            UserError::EmailTaken => Status::already_exists("email address is already registered"),
            UserError::Overloaded { retry_after } => resource_exhausted(
                "too many password checks in progress; try again shortly",
                retry_after,
            ),
            UserError::Unexpected(err) => internal(err.as_ref()),
        }
    }
}

fn page_error(field: &str, err: &PageError) -> Status {
    invalid_argument(&[FieldViolation::new(field, err.to_string())])
}

/// Turns an AIP-134 update into domain changes. An absent or empty mask means every
/// updatable field that is set (non-empty); `*` means every updatable field.
fn changes_from_mask(
    user: &pb::User,
    mask: Option<&prost_types::FieldMask>,
) -> Result<UserChanges, Status> {
    if let Some(mask) = mask {
        check_max_items("update_mask", mask.paths.len(), MAX_UPDATE_MASK_PATHS)?;
    }
    let paths: Vec<&str> = match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.iter().map(String::as_str).collect(),
        _ => {
            let mut implied = Vec::new();
            if !user.email.is_empty() {
                implied.push("email");
            }
            if !user.display_name.is_empty() {
                implied.push("display_name");
            }
            implied
        }
    };
    let mut changes = UserChanges::default();
    let mut violations = Vec::new();
    for path in paths {
        match path {
            "email" => match Email::parse("user.email", &user.email) {
                Ok(email) => changes.email = Some(email),
                Err(v) => violations.push(v),
            },
            "display_name" => match DisplayName::parse("user.display_name", &user.display_name) {
                Ok(name) => changes.display_name = Some(name),
                Err(v) => violations.push(v),
            },
            "*" => {
                return changes_from_mask(
                    user,
                    Some(&prost_types::FieldMask {
                        paths: vec!["email".into(), "display_name".into()],
                    }),
                );
            }
            "id" | "create_time" | "update_time" => violations.push(FieldViolation::new(
                "update_mask",
                format!("{path} is output only and cannot be updated"),
            )),
            other => violations.push(FieldViolation::new(
                "update_mask",
                format!("unknown or immutable field {other:?}"),
            )),
        }
    }
    if violations.is_empty() {
        Ok(changes)
    } else {
        Err(invalid_argument(&violations))
    }
}

/// The wire form of a user. Carries no password material because the domain type has none.
pub fn to_proto(user: &User) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        email: user.email.as_str().to_owned(),
        display_name: user.display_name.as_str().to_owned(),
        create_time: Some(SystemTime::from(user.create_time).into()),
        update_time: Some(SystemTime::from(user.update_time).into()),
        roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
    }
}
