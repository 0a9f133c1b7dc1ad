//! The greeter binary: the platform does everything but the service's own code.

fn main() -> std::process::ExitCode {
    trellis_platform::run::<greeter::Service>()
}
