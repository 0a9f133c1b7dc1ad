//! Which methods need which caller, declared per method or per service in one place.

use std::collections::HashMap;

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; no token is checked.
    Public,
    /// Any valid access token (an end user's or a service's).
    Authenticated,
    /// A service identity only: no token → UNAUTHENTICATED, an end-user token →
    /// PERMISSION_DENIED.
    Internal,
}

/// Access rules by gRPC path. A method's own rule wins over its service's, which wins
/// over the default. Health and reflection are always public.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    rules: HashMap<String, Access>,
    default: Access,
}

impl Default for AccessPolicy {
    /// Everything needs a valid token unless declared otherwise.
    fn default() -> Self {
        Self::new(Access::Authenticated)
    }
}

impl AccessPolicy {
    /// A policy whose unlisted methods need `default`.
    pub fn new(default: Access) -> Self {
        let mut rules = HashMap::new();
        for service in [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            rules.insert(service.to_owned(), Access::Public);
        }
        Self { rules, default }
    }

    /// Sets the rule of one method, named `package.Service/Method`.
    #[must_use]
    pub fn method(mut self, method: &str, access: Access) -> Self {
        self.rules
            .insert(method.trim_start_matches('/').to_owned(), access);
        self
    }

    /// Sets the rule of every method of `package.Service` without a rule of its own.
    #[must_use]
    pub fn service(mut self, service: &str, access: Access) -> Self {
        self.rules.insert(service.to_owned(), access);
        self
    }

    /// Whether any method needs a token (if none does, no verifier is needed).
    pub fn requires_token(&self) -> bool {
        self.default != Access::Public || self.rules.values().any(|a| *a != Access::Public)
    }

    /// The rule for a request path `/package.Service/Method`.
    pub fn access(&self, path: &str) -> Access {
        let method = path.trim_start_matches('/');
        if let Some(access) = self.rules.get(method) {
            return *access;
        }
        let service = method
            .split_once('/')
            .map_or(method, |(service, _)| service);
        self.rules.get(service).copied().unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_rule_beats_service_rule_beats_default() {
        let policy = AccessPolicy::default()
            .service("a.B", Access::Internal)
            .method("a.B/Open", Access::Public);
        assert_eq!(policy.access("/a.B/Open"), Access::Public);
        assert_eq!(policy.access("/a.B/Other"), Access::Internal);
        assert_eq!(policy.access("/a.C/Any"), Access::Authenticated);
        assert_eq!(
            policy.access("/grpc.health.v1.Health/Watch"),
            Access::Public
        );
    }

    #[test]
    fn only_an_all_public_policy_needs_no_token() {
        assert!(!AccessPolicy::new(Access::Public).requires_token());
        assert!(AccessPolicy::default().requires_token());
        assert!(
            AccessPolicy::new(Access::Public)
                .service("a.B", Access::Internal)
                .requires_token()
        );
    }
}
