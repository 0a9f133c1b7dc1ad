//! The dev admin `up` makes once the user service serves: an account with the admin
//! role, with a password made at random on the first run and kept beside the services'
//! data.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use super::processes::{Running, set_environment};
use super::random_secret;

/// The account `up` makes an admin, through the user service's management command
/// (`user-service admin grant --create`), the way an operator makes the first admin.
pub(super) const DEV_ADMIN_EMAIL: &str = "admin@example.com";
/// Where `up` keeps the dev admin's password (made at random on the first run, readable
/// by the owner only), beside the services' SQLite files.
pub(super) const DEV_ADMIN_PASSWORD_FILE: &str = ".data/dev-admin-password";

/// Gives [`DEV_ADMIN_EMAIL`] the admin role with `user-service admin grant --create`,
/// run with the same config as the service (it may run meanwhile: they share the
/// database). On the first run it creates the account, with the password in
/// [`DEV_ADMIN_PASSWORD_FILE`]; later runs only make sure of the role.
pub(super) fn grant_dev_admin(
    root: &Path,
    service: &Running,
    environment: &[(String, String)],
) -> anyhow::Result<()> {
    let binary = &service.binary;
    let password = dev_admin_password(root)?;
    let mut command = Command::new(binary);
    command
        .current_dir(root)
        .args(["admin", "grant", "--create", DEV_ADMIN_EMAIL])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    set_environment(&mut command, &service.replica, environment);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {} admin grant", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // The password goes through a pipe, never the command line.
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .context("passing the dev admin's password")?;
    }
    let output = child
        .wait_with_output()
        .context("waiting for user-service admin grant")?;
    if !output.status.success() {
        bail!(
            "making {DEV_ADMIN_EMAIL} an admin failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    eprintln!("xtask: {}", String::from_utf8_lossy(&output.stdout).trim());
    Ok(())
}

/// The dev admin's password from [`DEV_ADMIN_PASSWORD_FILE`], made at random (and the
/// file created, owner-only) when there is none.
fn dev_admin_password(root: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = root.join(DEV_ADMIN_PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(password) => return Ok(password.trim().to_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    }
    let password = random_secret()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{password}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(password)
}
