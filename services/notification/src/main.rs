//! The notification service binary: the platform loads the config, builds the service
//! and serves until a signal.

fn main() -> std::process::ExitCode {
    trellis_platform::run::<notification_service::Service>()
}
