//! Stopping a child process of xtask gracefully: what `up` does to every service it
//! started and to Prometheus, and what the Prometheus launcher does to one that never
//! listened.

use std::process::Child;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Sends SIGTERM to `child` and waits for it, saying how it ended. Returns whether it
/// exited with status 0.
pub(crate) fn stop_child(name: &str, child: &mut Child) -> bool {
    if let Ok(pid) = i32::try_from(child.id()) {
        // Already gone is fine: wait() below reports how it ended.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match child.wait() {
        Ok(status) if status.success() => {
            eprintln!("xtask: {name} stopped");
            true
        }
        Ok(status) => {
            eprintln!("xtask: {name} stopped with {status}");
            false
        }
        Err(err) => {
            eprintln!("xtask: waiting for {name}: {err}");
            false
        }
    }
}
