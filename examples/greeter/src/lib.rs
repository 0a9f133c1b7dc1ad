//! The example service: greets by name, stores each greeting, streams them back. It is
//! the smallest complete service on the Trellis platform — copy it to start your own.
//!
//! Layers: [`grpc`] (wire ⇄ domain, statuses), [`domain`] (rules, no gRPC, no SQL),
//! [`storage`] (sea-orm entity, migration, repository). This file is the wiring.

pub mod domain;
pub mod grpc;
pub mod storage;

use trellis_platform::service::NoSettings;
use trellis_platform::{BuildError, Context, ServiceInfo};
use trellis_proto::greeter_v1::greeter_service_server::GreeterServiceServer;

/// The greeter, as the platform runs it: `trellis_platform::run::<Service>()`.
#[derive(Debug)]
pub struct Service;

/// Every setting of the greeter: the platform's sections, from `TRELLIS_GREETER__*`.
pub type Config = trellis_platform::Config<Service>;

impl trellis_platform::Service for Service {
    const INFO: ServiceInfo = ServiceInfo {
        name: "greeter",
        env_prefix: "TRELLIS_GREETER",
    };
    const DEFAULT_PORT: u16 = 50061;
    /// `auth` publishes the keys that verify access tokens.
    const DEFAULT_PEERS: &'static [(&'static str, &'static str)] =
        &[("auth", "http://127.0.0.1:50052")];
    type Settings = NoSettings;
    type Migrator = storage::Migrator;

    async fn build(ctx: &mut Context<Self>) -> Result<(), BuildError> {
        let greetings = domain::Greetings::new(storage::SeaOrmGreetings::new(ctx.db().clone()));
        ctx.add_service(GreeterServiceServer::new(grpc::Handlers::new(greetings)));
        Ok(())
    }
}
