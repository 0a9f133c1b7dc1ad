//! Which methods need which caller, declared per method or per service in one place.

use std::collections::HashMap;

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; no token is checked.
    Public,
    /// Any valid access token (an end user's or a service's).
    Authenticated,
    /// A service identity named in the method's caller allowlist (declared with
    /// [`AccessPolicy::internal`]): no token → UNAUTHENTICATED; an end-user token, or a
    /// service not on the list → PERMISSION_DENIED. With no list declared, no service
    /// may call (deny by default, OWASP's "deny by default" access-control rule).
    Internal,
}

/// Access rules by gRPC path. A method's own rule wins over its service's, which wins
/// over the default; the same precedence picks an internal method's caller allowlist.
/// Health and reflection are always public.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    rules: HashMap<String, Access>,
    /// Service names (the `<client_id>` of a `service:<client_id>` subject) allowed to
    /// call an internal method or service, keyed like `rules`.
    callers: HashMap<String, Vec<String>>,
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
        Self {
            rules,
            callers: HashMap::new(),
            default,
        }
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

    /// Makes `name` — a method `package.Service/Method` or a whole `package.Service` —
    /// [`Access::Internal`], callable only by the services named in `callers` (their
    /// client ids, e.g. `"auth"` for the subject `service:auth`).
    #[must_use]
    pub fn internal(mut self, name: &str, callers: &[&str]) -> Self {
        let name = name.trim_start_matches('/').to_owned();
        self.callers.insert(
            name.clone(),
            callers.iter().map(|caller| (*caller).to_owned()).collect(),
        );
        self.rules.insert(name, Access::Internal);
        self
    }

    /// Whether the service `caller` (a client id) may call the internal method at `path`
    /// (`/package.Service/Method`): the method's own allowlist if it has one, else its
    /// service's; none declared → `false`.
    pub fn allows_caller(&self, path: &str, caller: &str) -> bool {
        let method = path.trim_start_matches('/');
        let service = method
            .split_once('/')
            .map_or(method, |(service, _)| service);
        self.callers
            .get(method)
            .or_else(|| self.callers.get(service))
            .is_some_and(|allowed| allowed.iter().any(|name| name == caller))
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
    fn internal_methods_admit_only_their_declared_callers() {
        let policy = AccessPolicy::default()
            .internal("a.Internal/Verify", &["auth"])
            .internal("a.Internal", &["user"])
            .internal("/a.Internal/Send", &["user", "auth"]);
        assert_eq!(policy.access("/a.Internal/Verify"), Access::Internal);
        assert!(policy.allows_caller("/a.Internal/Verify", "auth"));
        assert!(!policy.allows_caller("/a.Internal/Verify", "user"));
        // The service's list covers methods without their own.
        assert_eq!(policy.access("/a.Internal/Other"), Access::Internal);
        assert!(policy.allows_caller("/a.Internal/Other", "user"));
        assert!(!policy.allows_caller("/a.Internal/Other", "auth"));
        assert!(policy.allows_caller("/a.Internal/Send", "auth"));
        assert!(!policy.allows_caller("/a.Internal/Send", "notification"));
    }

    #[test]
    fn an_internal_rule_without_a_caller_list_admits_no_service() {
        let policy = AccessPolicy::default().service("a.Internal", Access::Internal);
        assert!(!policy.allows_caller("/a.Internal/Any", "auth"));
        assert!(!AccessPolicy::default().allows_caller("/a.B/C", "auth"));
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
