//! In-process fakes of the auth service's peers, served with tonic on 127.0.0.1:0:
//! [`FakeUsers`] answers `UserInternalService/VerifyCredentials` for a few known
//! accounts, [`FakeNotifications`] records `NotificationInternalService/SendNotification`.
//! Either can be told to be down (it then answers UNAVAILABLE), and both record the
//! `authorization` header of every call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tonic::service::Routes;
use tonic::{Request, Response, Status};
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

/// A fake user service that knows [`ADA`] and [`ADMIN`], both with [`PASSWORD`].
/// Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub(crate) struct FakeUsers {
    state: Arc<UsersState>,
}

#[derive(Debug)]
struct UsersState {
    accounts: Vec<user_pb::User>,
    down: AtomicBool,
    /// The `authorization` header of each call, in order.
    calls: Mutex<Vec<Option<String>>>,
}

impl FakeUsers {
    /// Starts serving; the returned [`Serving`] stops it when dropped.
    pub(crate) async fn start() -> (Self, Serving) {
        let account = |email: &str, name: &str| user_pb::User {
            id: uuid::Uuid::now_v7().to_string(),
            email: email.to_owned(),
            display_name: name.to_owned(),
            ..Default::default()
        };
        let fake = Self {
            state: Arc::new(UsersState {
                accounts: vec![account(ADA, "Ada"), account(ADMIN, "Admin")],
                down: AtomicBool::new(false),
                calls: Mutex::new(Vec::new()),
            }),
        };
        let serving = serve(Routes::new(UserInternalServiceServer::new(fake.clone()))).await;
        (fake, serving)
    }

    /// The account with `email`.
    pub(crate) fn account(&self, email: &str) -> user_pb::User {
        self.state
            .accounts
            .iter()
            .find(|a| a.email == email)
            .cloned()
            .unwrap_or_else(|| panic!("the fake user service knows no {email}"))
    }

    /// Makes every call answer UNAVAILABLE (`true`) or be served again (`false`).
    pub(crate) fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// The `authorization` header of each call received so far.
    pub(crate) fn calls(&self) -> Vec<Option<String>> {
        self.state.calls.lock().expect("not poisoned").clone()
    }
}

#[tonic::async_trait]
impl UserInternalService for FakeUsers {
    /// Like the real service, wrong credentials are UNAUTHENTICATED — but with a
    /// different message for each cause, so tests can see that auth does not pass the
    /// difference on.
    async fn lookup_user(
        &self,
        _request: Request<user_pb::LookupUserRequest>,
    ) -> Result<Response<user_pb::LookupUserResponse>, Status> {
        Err(Status::unimplemented("not faked yet"))
    }

    async fn verify_credentials(
        &self,
        request: Request<user_pb::VerifyCredentialsRequest>,
    ) -> Result<Response<user_pb::VerifyCredentialsResponse>, Status> {
        self.state
            .calls
            .lock()
            .expect("not poisoned")
            .push(authorization(&request));
        if self.state.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the fake user service is down"));
        }
        let request = request.into_inner();
        let Some(user) = self
            .state
            .accounts
            .iter()
            .find(|a| a.email == request.email.trim())
        else {
            return Err(Status::unauthenticated("no account with that email"));
        };
        if request.password != PASSWORD {
            return Err(Status::unauthenticated("wrong password"));
        }
        Ok(Response::new(user_pb::VerifyCredentialsResponse {
            user: Some(user.clone()),
        }))
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
