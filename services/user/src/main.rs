//! The user service binary: the platform loads the config, builds the service and
//! serves until a signal, or runs a management command (`user-service admin grant EMAIL`).

fn main() -> std::process::ExitCode {
    trellis_platform::run_with::<user_service::Service, user_service::admin::Command>()
}
