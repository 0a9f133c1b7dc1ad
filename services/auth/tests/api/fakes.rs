//! In-process fakes of the auth service's peers, served with tonic on 127.0.0.1:0:
//! [`FakeUsers`] answers `UserInternalService/VerifyCredentials` and `LookupUser` for a
//! few known accounts, whose roles and existence tests change; [`FakeNotifications`]
//! records `NotificationInternalService/SendNotification`. Either can be told to be down
//! (it then answers UNAVAILABLE), and both record the `authorization` header of every
//! call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tonic::service::Routes;
use tonic::{Request, Response, Status};
use trellis_platform::auth::ADMIN_ROLE;
use trellis_proto::notification_v1 as notification_pb;
use trellis_proto::user_v1 as user_pb;

use notification_pb::notification_internal_service_server::{
    NotificationInternalService, NotificationInternalServiceServer,
};
use user_pb::user_internal_service_server::{UserInternalService, UserInternalServiceServer};

use crate::helpers::{ADA, ADMIN, PASSWORD};

/// A fake peer's server task, stopped when dropped.
#[derive(Debug)]
pub(crate) struct Serving {
    /// Where it serves.
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// The base URI to configure as the peer's address.
    pub(crate) fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `routes` on a port of 127.0.0.1 the system chose.
async fn serve(routes: Routes) -> Serving {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port on 127.0.0.1");
    let addr = listener.local_addr().expect("a bound address");
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        drop(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(incoming)
                .await,
        );
    });
    Serving { addr, task }
}

/// The `authorization` header of `request`, if any.
fn authorization<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// A fake user service that knows [`ADA`] and [`ADMIN`] (with the `admin` role), both
/// with [`PASSWORD`]. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub(crate) struct FakeUsers {
    state: Arc<UsersState>,
}

#[derive(Debug)]
struct UsersState {
    accounts: Mutex<Vec<user_pb::User>>,
    down: AtomicBool,
    /// Answer UNAUTHENTICATED, as the real service does when it rejects the caller's
    /// service token.
    rejecting_callers: AtomicBool,
    /// While `false`, `VerifyCredentials` calls wait (after being counted).
    open: tokio::sync::watch::Sender<bool>,
    /// The `authorization` header of each `VerifyCredentials` call, in order.
    calls: Mutex<Vec<Option<String>>>,
    /// The id asked for in each `LookupUser` call, in order.
    lookups: Mutex<Vec<String>>,
}

impl FakeUsers {
    /// Starts serving; the returned [`Serving`] stops it when dropped.
    pub(crate) async fn start() -> (Self, Serving) {
        let account = |email: &str, name: &str, roles: &[&str]| user_pb::User {
            id: uuid::Uuid::now_v7().to_string(),
            email: email.to_owned(),
            display_name: name.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..Default::default()
        };
        let fake = Self {
            state: Arc::new(UsersState {
                accounts: Mutex::new(vec![
                    account(ADA, "Ada", &[]),
                    account(ADMIN, "Admin", &[ADMIN_ROLE]),
                ]),
                down: AtomicBool::new(false),
                rejecting_callers: AtomicBool::new(false),
                open: tokio::sync::watch::Sender::new(true),
                calls: Mutex::new(Vec::new()),
                lookups: Mutex::new(Vec::new()),
            }),
        };
        let serving = serve(Routes::new(UserInternalServiceServer::new(fake.clone()))).await;
        (fake, serving)
    }

    /// The account with `email`.
    pub(crate) fn account(&self, email: &str) -> user_pb::User {
        self.find(|a| a.email == email)
            .unwrap_or_else(|| panic!("the fake user service knows no {email}"))
    }

    /// The first account that `matches`.
    fn find(&self, matches: impl Fn(&user_pb::User) -> bool) -> Option<user_pb::User> {
        self.state
            .accounts
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|a| matches(a))
            .cloned()
    }

    /// Adds an account with [`PASSWORD`] and `roles`; returns it.
    pub(crate) fn add_account(&self, email: &str, roles: &[&str]) -> user_pb::User {
        let user = user_pb::User {
            id: uuid::Uuid::now_v7().to_string(),
            email: email.to_owned(),
            display_name: email.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..Default::default()
        };
        self.state
            .accounts
            .lock()
            .expect("not poisoned")
            .push(user.clone());
        user
    }

    /// Puts back a deleted account (same id).
    pub(crate) fn restore(&self, user: user_pb::User) {
        self.state.accounts.lock().expect("not poisoned").push(user);
    }

    /// Replaces the roles of the account with `email` (as GrantRole/RevokeRole would).
    pub(crate) fn set_roles(&self, email: &str, roles: &[&str]) {
        let mut accounts = self.state.accounts.lock().expect("not poisoned");
        let account = accounts
            .iter_mut()
            .find(|a| a.email == email)
            .unwrap_or_else(|| panic!("the fake user service knows no {email}"));
        account.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    }

    /// Deletes the account with `email`.
    pub(crate) fn delete(&self, email: &str) {
        self.state
            .accounts
            .lock()
            .expect("not poisoned")
            .retain(|a| a.email != email);
    }

    /// Makes every call answer UNAVAILABLE (`true`) or be served again (`false`).
    pub(crate) fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Makes every call answer UNAUTHENTICATED, as when the real service rejects the
    /// caller's service token (`true`), or be served again (`false`).
    pub(crate) fn set_rejecting_callers(&self, rejecting: bool) {
        self.state
            .rejecting_callers
            .store(rejecting, Ordering::SeqCst);
    }

    /// Holds `VerifyCredentials` calls, once counted in [`Self::calls`], until
    /// [`Self::release`].
    pub(crate) fn hold(&self) {
        self.state.open.send_replace(false);
    }

    /// Lets held and later `VerifyCredentials` calls through.
    pub(crate) fn release(&self) {
        self.state.open.send_replace(true);
    }

    /// The `authorization` header of each `VerifyCredentials` call received so far.
    pub(crate) fn calls(&self) -> Vec<Option<String>> {
        self.state.calls.lock().expect("not poisoned").clone()
    }

    /// The id asked for in each `LookupUser` call so far.
    pub(crate) fn lookups(&self) -> Vec<String> {
        self.state.lookups.lock().expect("not poisoned").clone()
    }

    /// The status every call answers with right now, if it is not served.
    fn fault(&self) -> Option<Status> {
        if self.state.down.load(Ordering::SeqCst) {
            return Some(Status::unavailable("the fake user service is down"));
        }
        if self.state.rejecting_callers.load(Ordering::SeqCst) {
            return Some(Status::unauthenticated(
                "the fake user service rejects the caller's token",
            ));
        }
        None
    }
}

#[tonic::async_trait]
impl UserInternalService for FakeUsers {
    /// Like the real service: a user with their current roles, NOT_FOUND once deleted.
    async fn lookup_user(
        &self,
        request: Request<user_pb::LookupUserRequest>,
    ) -> Result<Response<user_pb::LookupUserResponse>, Status> {
        self.state
            .lookups
            .lock()
            .expect("not poisoned")
            .push(request.get_ref().id.clone());
        if let Some(fault) = self.fault() {
            return Err(fault);
        }
        let id = request.into_inner().id;
        let user = self
            .find(|a| a.id == id)
            .ok_or_else(|| Status::not_found("no such user"))?;
        Ok(Response::new(user_pb::LookupUserResponse {
            user: Some(user),
        }))
    }

    /// Like the real service, a mismatch (unknown email or wrong password) is answered
    /// OK with no user.
    async fn verify_credentials(
        &self,
        request: Request<user_pb::VerifyCredentialsRequest>,
    ) -> Result<Response<user_pb::VerifyCredentialsResponse>, Status> {
        self.state
            .calls
            .lock()
            .expect("not poisoned")
            .push(authorization(&request));
        let mut open = self.state.open.subscribe();
        // The sender lives as long as the fake: waiting cannot fail.
        let _ = open.wait_for(|open| *open).await;
        if let Some(fault) = self.fault() {
            return Err(fault);
        }
        let request = request.into_inner();
        let user = self.find(|a| a.email == request.email.trim() && request.password == PASSWORD);
        Ok(Response::new(user_pb::VerifyCredentialsResponse { user }))
    }
}

/// A fake notification service that records what it is sent. Cheap to clone; clones
/// share state.
#[derive(Debug, Clone)]
pub(crate) struct FakeNotifications {
    state: Arc<NotificationsState>,
}

#[derive(Debug)]
struct NotificationsState {
    down: AtomicBool,
    /// Calls answered UNAVAILABLE while down.
    refused: Mutex<usize>,
    /// Each accepted request with its `authorization` header.
    received: Mutex<Vec<(notification_pb::SendNotificationRequest, Option<String>)>>,
}

impl FakeNotifications {
    /// Starts serving, down when `down`; the returned [`Serving`] stops it when dropped.
    pub(crate) async fn start(down: bool) -> (Self, Serving) {
        let fake = Self {
            state: Arc::new(NotificationsState {
                down: AtomicBool::new(down),
                refused: Mutex::new(0),
                received: Mutex::new(Vec::new()),
            }),
        };
        let serving = serve(Routes::new(NotificationInternalServiceServer::new(
            fake.clone(),
        )))
        .await;
        (fake, serving)
    }

    /// Makes every call answer UNAVAILABLE (`true`) or be accepted again (`false`).
    pub(crate) fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How many calls were answered UNAVAILABLE.
    pub(crate) fn refused(&self) -> usize {
        *self.state.refused.lock().expect("not poisoned")
    }

    /// Every accepted request with its `authorization` header.
    pub(crate) fn received(
        &self,
    ) -> Vec<(notification_pb::SendNotificationRequest, Option<String>)> {
        self.state.received.lock().expect("not poisoned").clone()
    }
}

#[tonic::async_trait]
impl NotificationInternalService for FakeNotifications {
    async fn send_notification(
        &self,
        request: Request<notification_pb::SendNotificationRequest>,
    ) -> Result<Response<notification_pb::SendNotificationResponse>, Status> {
        if self.state.down.load(Ordering::SeqCst) {
            *self.state.refused.lock().expect("not poisoned") += 1;
            return Err(Status::unavailable("the fake notification service is down"));
        }
        let header = authorization(&request);
        let request = request.into_inner();
        let notification = notification_pb::Notification {
            id: request.idempotency_key.clone(),
            user_id: request.user_id.clone(),
            kind: request.kind.clone(),
            title: request.title.clone(),
            body: request.body.clone(),
            ..Default::default()
        };
        self.state
            .received
            .lock()
            .expect("not poisoned")
            .push((request, header));
        Ok(Response::new(notification_pb::SendNotificationResponse {
            notification: Some(notification),
            created: true,
        }))
    }
}
