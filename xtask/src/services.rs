//! The services of the working system in one table — name, package (and binary), ports,
//! environment prefix, log colour and peers — read by `up`, `images`, `bench` and the
//! manifests' tests, and checked against each service's own `DEFAULT_PEERS`.

/// A service of the system.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Service {
    /// Its name: the peer name others call it by, its directory under `services/`, its
    /// image (`<prefix>/<name>-service`) and its Prometheus job.
    pub(crate) name: &'static str,
    /// Its cargo package, which is also the name of its binary.
    pub(crate) package: &'static str,
    /// Its default gRPC port (the Dockerfile's `PORT`).
    pub(crate) port: u16,
    /// The default `metrics.port` (the gRPC port + 1000), passed explicitly by `up`.
    pub(crate) metrics_port: u16,
    /// The prefix of its configuration's environment variables.
    pub(crate) env_prefix: &'static str,
    /// The ANSI colour of its log prefix under `up`.
    pub(crate) colour: &'static str,
    /// The services it calls (its `DEFAULT_PEERS`, by name).
    pub(crate) peers: &'static [&'static str],
}

/// Every service, in dependency order (a service starts after those it calls).
pub(crate) const SERVICES: &[Service] = &[
    Service {
        name: "notification",
        package: "notification-service",
        port: 50053,
        metrics_port: 51053,
        env_prefix: "TRELLIS_NOTIFICATION",
        colour: "\x1b[35m",
        peers: &["auth"],
    },
    Service {
        name: "user",
        package: "user-service",
        port: 50051,
        metrics_port: 51051,
        env_prefix: "TRELLIS_USER",
        colour: "\x1b[36m",
        peers: &["auth", "notification"],
    },
    Service {
        name: "auth",
        package: "auth-service",
        port: 50052,
        metrics_port: 51052,
        env_prefix: "TRELLIS_AUTH",
        colour: "\x1b[33m",
        peers: &["user", "notification"],
    },
];

/// The service named `name`.
pub(crate) fn service(name: &str) -> Option<&'static Service> {
    SERVICES.iter().find(|service| service.name == name)
}

/// Every service in order of its gRPC port (user, auth, notification): the order images
/// are built and listed in, and Compose's addresses are named in.
pub(crate) fn by_port() -> Vec<&'static Service> {
    let mut services: Vec<&Service> = SERVICES.iter().collect();
    services.sort_by_key(|service| service.port);
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_ports_are_the_grpc_ports_plus_1000() {
        for service in SERVICES {
            assert_eq!(
                service.metrics_port,
                service.port + 1000,
                "{}",
                service.name
            );
        }
    }

    #[test]
    fn the_peer_table_matches_the_services_default_peers() {
        let root = crate::workspace_root();
        for service in SERVICES {
            let path = root.join(format!("services/{}/src/lib.rs", service.name));
            let source = std::fs::read_to_string(&path).expect("the service's lib.rs");
            let start = source.find("DEFAULT_PEERS").expect("DEFAULT_PEERS");
            let block = &source[start..];
            let block = &block[..block.find("];").expect("the end of DEFAULT_PEERS")];
            // ("name", "http://127.0.0.1:port") pairs: every other quoted string.
            let quoted: Vec<&str> = block.split('"').skip(1).step_by(2).collect();
            let names: Vec<&str> = quoted.iter().step_by(2).copied().collect();
            assert_eq!(names, service.peers, "{}", path.display());
            for pair in quoted.chunks(2) {
                let peer = super::service(pair[0]).expect("a peer in the table");
                assert_eq!(
                    pair[1],
                    format!("http://127.0.0.1:{}", peer.port),
                    "{pair:?}"
                );
            }
        }
    }

    #[test]
    fn services_are_listed_by_port_for_images_and_compose() {
        let names: Vec<&str> = by_port().iter().map(|service| service.name).collect();
        assert_eq!(names, ["user", "auth", "notification"]);
    }
}
