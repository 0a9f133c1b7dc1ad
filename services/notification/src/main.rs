//! The notification service binary: load and validate config, build, serve until a signal.

use std::process::ExitCode;

use notification_service::{Config, SERVICE};

fn main() -> ExitCode {
    trellis_platform::run::<Config, _, _, _>(&SERVICE, |config| async move {
        notification_service::build(config)
            .await?
            .run_until_stopped()
            .await?;
        Ok::<_, anyhow::Error>(())
    })
}
