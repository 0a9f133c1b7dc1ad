//! A real single-member etcd for tests (Debian's `etcd-server` package): started on free
//! ports over a temporary data directory, killed when dropped; over TLS with client
//! certificates required when started with [`EtcdServer::start_tls`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use trellis_proto::etcd::etcdserverpb::{RangeRequest, kv_client::KvClient};

use super::{EVENTUALLY, TestCa, WorkloadFiles};

/// A running `etcd` process; killed (not gracefully stopped) on drop.
#[derive(Debug)]
pub struct EtcdServer {
    /// Its client URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    peer_url: String,
    binary: PathBuf,
    data: TempDir,
    child: Option<Child>,
    /// Over TLS: the server's files and the client config the readiness check uses.
    tls: Option<(WorkloadFiles, ClientTlsConfig)>,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers a `Range`; `None` (the test is skipped, see
    /// [`super::installed_tool`]) when `etcd` is not installed.
    ///
    /// # Panics
    /// When etcd does not start and answer within [`EVENTUALLY`] (its log is in the
    /// message), after three tries on fresh ports.
    pub async fn start() -> Option<Self> {
        Self::start_with(None).await
    }

    /// Like [`Self::start`], serving `https://localhost:<port>` with a certificate of
    /// `ca` and requiring a client certificate of `ca` (`--client-cert-auth`); the
    /// readiness check presents `client`.
    ///
    /// # Panics
    /// As [`Self::start`].
    pub async fn start_tls(ca: &TestCa, client: &WorkloadFiles) -> Option<Self> {
        let server = ca.issue(
            &crate::tls::SpiffeId::workload(crate::tls::DEFAULT_TRUST_DOMAIN, "default", "etcd"),
            "etcd",
        );
        let read = |path: &PathBuf| std::fs::read(path).expect("a TLS file");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&server.ca)))
            .identity(Identity::from_pem(read(&client.cert), read(&client.key)));
        Self::start_with(Some((server, tls))).await
    }

    async fn start_with(tls: Option<(WorkloadFiles, ClientTlsConfig)>) -> Option<Self> {
        let binary = super::installed_tool("etcd", "etcd-server")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = if tls.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let mut failures = Vec::new();
        // A port picked free may be taken before etcd binds it: try again on new ones.
        for _ in 0..3 {
            let [client, peer] = free_ports();
            let mut server = Self {
                url: format!("{scheme}://{host}:{client}"),
                peer_url: format!("http://127.0.0.1:{peer}"),
                binary: binary.clone(),
                data: tempfile::tempdir().expect("a temporary directory"),
                child: None,
                tls: tls.clone(),
            };
            match server.run().await {
                Ok(()) => return Some(server),
                Err(log) => failures.push(log),
            }
        }
        panic!("etcd does not start:\n{}", failures.join("\n---\n"));
    }

    /// Kills the process, keeping its data and ports for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same ports and data, and waits until it answers.
    ///
    /// # Panics
    /// When it does not.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.run().await {
            panic!("etcd does not start again:\n{log}");
        }
    }

    /// Spawns etcd and waits until it answers; its log when it exits or does not answer.
    async fn run(&mut self) -> Result<(), String> {
        let log_path = self.data.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("the log file opens");
        let mut command = Command::new(&self.binary);
        if let Some((files, _)) = &self.tls {
            command
                .arg(format!("--cert-file={}", files.cert.display()))
                .arg(format!("--key-file={}", files.key.display()))
                .arg(format!("--trusted-ca-file={}", files.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                self.data.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster=default={}", self.peer_url))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file is shared"))
            .stderr(log)
            .spawn()
            .expect("etcd runs");
        self.child = Some(child);
        let mut endpoint = Channel::from_shared(self.url.clone()).expect("a valid URL");
        if let Some((_, tls)) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).expect("a TLS config");
        }
        let channel = endpoint.connect_lazy();
        let mut kv = KvClient::new(channel);
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            let answer = kv
                .range(RangeRequest {
                    key: b"/".to_vec(),
                    ..RangeRequest::default()
                })
                .await;
            if answer.is_ok() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || tokio::time::Instant::now() >= deadline {
                self.kill();
                return Err(read_log(&log_path));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two distinct ports free on 127.0.0.1 now.
fn free_ports() -> [u16; 2] {
    let first = super::local_listener();
    let second = super::local_listener();
    [first, second].map(|listener| listener.local_addr().expect("a bound address").port())
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| format!("(no log: {err})"))
}
