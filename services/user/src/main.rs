//! The user service binary: load and validate config, build, serve until a signal.

use std::process::ExitCode;

use user_service::{Config, SERVICE};

fn main() -> ExitCode {
    trellis_platform::run::<Config, _, _, _>(&SERVICE, |config| async move {
        user_service::build(config)
            .await?
            .run_until_stopped()
            .await?;
        Ok::<_, anyhow::Error>(())
    })
}
