//! Roles: what a user may do beyond acting on their own account. Roles are stored with
//! the user and changed only by an admin (GrantRole/RevokeRole) or by an operator with the
//! service's `admin` command; they are never derived from anything a user chose, such as
//! their email address.

use trellis_platform::validation::FieldViolation;

/// A role a user can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// May list, read and delete every user, and grant and revoke roles. Access tokens
    /// carry it as `"admin"` (the platform's `ADMIN_ROLE`, checked by
    /// `Principal::is_admin`).
    Admin,
}

impl Role {
    /// Every role there is.
    pub const ALL: [Role; 1] = [Role::Admin];

    /// The role's name on the wire, in tokens and in storage, e.g. `"admin"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => trellis_platform::auth::ADMIN_ROLE,
        }
    }

    /// The role named `raw` (exact, lower-case); errors name `field`.
    ///
    /// # Errors
    /// A [`FieldViolation`] listing the roles there are when `raw` names none of them.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldViolation> {
        Self::from_stored(raw).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|r| r.as_str()).collect();
            FieldViolation::new(
                field,
                format!("unknown role; the roles are: {}", known.join(", ")),
            )
        })
    }

    /// The role named `stored`, `None` for a name this version does not know (a row
    /// written by a newer version is ignored rather than failing every read).
    pub fn from_stored(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_role_names_parse() {
        assert_eq!(Role::parse("role", "admin"), Ok(Role::Admin));
        for raw in ["", "Admin", "ADMIN", " admin", "root", "admin,admin"] {
            assert!(Role::parse("role", raw).is_err(), "{raw:?} was accepted");
        }
    }
}
