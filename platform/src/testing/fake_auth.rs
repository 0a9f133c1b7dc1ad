//! A fake identity peer: `trellis.auth.v1.AuthService` serving a [`TestIssuer`]'s key
//! (`ListSigningKeys`) and service tokens (`IssueServiceToken`, any secret accepted), so
//! a service under test fetches keys and credentials over gRPC as in production.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_proto::auth_v1 as pb;
use trellis_proto::auth_v1::auth_service_server::{AuthService, AuthServiceServer};

use super::TestIssuer;

/// A running fake identity peer.
#[derive(Debug)]
pub struct FakeAuth {
    /// Where it serves.
    pub addr: SocketAddr,
    /// The issuer whose key it publishes.
    pub issuer: TestIssuer,
    key_fetches: Arc<AtomicUsize>,
    token_requests: Arc<AtomicUsize>,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAuth {
    /// Starts serving `issuer`'s key on 127.0.0.1 (a port the system chose).
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(issuer: TestIssuer) -> Self {
        Self::start_with_key_delay(issuer, Duration::ZERO).await
    }

    /// Like [`FakeAuth::start`], but each `ListSigningKeys` answers only after `delay`:
    /// a slow identity peer, so callers with short deadlines give up while a key fetch
    /// runs.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start_with_key_delay(issuer: TestIssuer, delay: Duration) -> Self {
        Self::start_with(issuer, delay, None).await
    }

    /// Like [`FakeAuth::start`], over TLS with `files`' certificate (client
    /// certificates neither asked for nor checked): e.g. an impostor whose certificate
    /// names another workload.
    ///
    /// # Panics
    /// When no port can be bound or the files cannot be read.
    pub async fn start_tls(issuer: TestIssuer, files: &super::WorkloadFiles) -> Self {
        Self::start_with(issuer, Duration::ZERO, Some(files)).await
    }

    async fn start_with(
        issuer: TestIssuer,
        delay: Duration,
        tls: Option<&super::WorkloadFiles>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port on 127.0.0.1");
        let addr = listener.local_addr().expect("a bound address");
        let key_fetches = Arc::new(AtomicUsize::new(0));
        let token_requests = Arc::new(AtomicUsize::new(0));
        let service = AuthServiceServer::new(Handlers {
            issuer: issuer.clone(),
            key_delay: delay,
            key_fetches: Arc::clone(&key_fetches),
            token_requests: Arc::clone(&token_requests),
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(files) = tls {
            let identity = tonic::transport::Identity::from_pem(
                std::fs::read(&files.cert).expect("the certificate"),
                std::fs::read(&files.key).expect("the key"),
            );
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("a TLS server config");
        }
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            drop(
                builder
                    .add_service(service)
                    .serve_with_incoming(incoming)
                    .await,
            );
        });
        Self {
            addr,
            issuer,
            key_fetches,
            token_requests,
            tls: tls.is_some(),
            task,
        }
    }

    /// How many `IssueServiceToken` calls (each carrying a client secret) reached it.
    pub fn token_requests(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }

    /// How many `ListSigningKeys` calls reached it so far.
    pub fn key_fetches(&self) -> usize {
        self.key_fetches.load(Ordering::SeqCst)
    }

    /// The base URI to configure as the `auth` peer.
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for FakeAuth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Handlers {
    issuer: TestIssuer,
    key_delay: Duration,
    key_fetches: Arc<AtomicUsize>,
    token_requests: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl AuthService for Handlers {
    async fn login(
        &self,
        _: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        Err(Status::unimplemented(
            "the fake identity peer signs no users in",
        ))
    }

    async fn refresh_token(
        &self,
        _: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        Err(Status::unimplemented(
            "the fake identity peer refreshes nothing",
        ))
    }

    async fn logout(
        &self,
        _: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        Err(Status::unimplemented(
            "the fake identity peer has no sessions",
        ))
    }

    async fn list_signing_keys(
        &self,
        _: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        self.key_fetches.fetch_add(1, Ordering::SeqCst);
        if !self.key_delay.is_zero() {
            tokio::time::sleep(self.key_delay).await;
        }
        let key = self.issuer.public_key();
        Ok(Response::new(pb::ListSigningKeysResponse {
            keys: vec![pb::SigningKey {
                kid: key.kid,
                kty: "OKP".to_owned(),
                crv: "Ed25519".to_owned(),
                x: key.x,
                alg: "EdDSA".to_owned(),
                ..Default::default()
            }],
        }))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        Ok(Response::new(pb::IssueServiceTokenResponse {
            access_token: self
                .issuer
                .service_token(&request.client_id, &request.audience),
            expires_in: 300,
        }))
    }
}
