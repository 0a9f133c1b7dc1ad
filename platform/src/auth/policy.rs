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

/// A rate-limit class: methods that share one budget per caller, and that budget's
/// defaults. A budget is a token bucket (GCRA, as `governor` implements it) holding
/// `burst` calls and refilled with `per_second` calls a second; an authenticated method
/// counts against the caller's subject, a public one against the client's address (IPv6
/// per /64). Config overrides a class by its name: `rate_limits.<name>.per_second` and
/// `.burst` (see [`crate::rate_limit`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateClass {
    /// The class's name, e.g. `read`: its config key and its `google.rpc.QuotaFailure`
    /// `quota_id`.
    pub name: &'static str,
    /// Calls a second once the burst is spent; 0 turns the class's limit off.
    pub per_second: f64,
    /// Calls a caller may make at once.
    pub burst: u32,
}

impl RateClass {
    /// Cheap reads (GetUser, ListNotifications, ListSigningKeys): 50/s, burst 200.
    pub const READ: Self = Self::new("read", 50.0, 200);
    /// Writes (UpdateUser, MarkRead, RefreshToken, …), and every method declared in no
    /// class: 10/s, burst 50.
    pub const WRITE: Self = Self::new("write", 10.0, 50);
    /// Calls that check a password or client secret (Login, CreateUser,
    /// IssueServiceToken): 2/s, burst 100 per address — the login throttle and the
    /// sign-up limit keep their own, narrower budgets beside it.
    pub const SIGN_IN: Self = Self::new("sign_in", 2.0, 100);
    /// Opening a long-lived stream (Subscribe, Connect): 1/s, burst 20.
    pub const STREAM: Self = Self::new("stream", 1.0, 20);

    /// A class named `name` (lower case, `[a-z0-9_]`, as it is a config key) allowing
    /// `per_second` calls a second and bursts of `burst`.
    pub const fn new(name: &'static str, per_second: f64, burst: u32) -> Self {
        Self {
            name,
            per_second,
            burst,
        }
    }
}

/// Access rules by gRPC path. A method's own rule wins over its service's, which wins
/// over the default; the same precedence picks an internal method's caller allowlist
/// and a method's [`RateClass`]. Health and reflection are always public and never
/// rate-limited.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    rules: HashMap<String, Access>,
    /// Service names (the `<client_id>` of a `service:<client_id>` subject) allowed to
    /// call an internal method or service, keyed like `rules`.
    callers: HashMap<String, Vec<String>>,
    /// Rate classes, keyed like `rules`.
    rates: HashMap<String, RateClass>,
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
            rates: HashMap::new(),
            default,
        }
    }

    /// Puts `name` — a method `package.Service/Method` or a whole `package.Service` —
    /// into the rate class `class`. Undeclared methods are in [`RateClass::WRITE`],
    /// except internal ones, which are not limited unless declared here: their callers
    /// are services carrying every user's traffic.
    #[must_use]
    pub fn rate(mut self, name: &str, class: RateClass) -> Self {
        self.rates
            .insert(name.trim_start_matches('/').to_owned(), class);
        self
    }

    /// The rate class of the method at `path` (`/package.Service/Method`): its own, else
    /// its service's, else [`RateClass::WRITE`]; `None` (not limited) for health,
    /// reflection, and internal methods without a declared class.
    pub fn rate_class(&self, path: &str) -> Option<RateClass> {
        let method = path.trim_start_matches('/');
        let service = method
            .split_once('/')
            .map_or(method, |(service, _)| service);
        if let Some(class) = self.rates.get(method).or_else(|| self.rates.get(service)) {
            return Some(*class);
        }
        if matches!(
            service,
            "grpc.health.v1.Health"
                | "grpc.reflection.v1.ServerReflection"
                | "grpc.reflection.v1alpha.ServerReflection"
        ) || self.access(path) == Access::Internal
        {
            return None;
        }
        Some(RateClass::WRITE)
    }

    /// Every class this policy can give a method ([`RateClass::WRITE`], the default,
    /// included), one per name (the first declared wins), ordered by name.
    pub fn rate_classes(&self) -> Vec<RateClass> {
        let mut classes: Vec<RateClass> = Vec::new();
        let mut declared: Vec<(&String, &RateClass)> = self.rates.iter().collect();
        declared.sort_by(|a, b| a.0.cmp(b.0));
        for class in declared
            .into_iter()
            .map(|(_, class)| *class)
            .chain([RateClass::WRITE])
        {
            if !classes.iter().any(|known| known.name == class.name) {
                classes.push(class);
            }
        }
        classes.sort_by(|a, b| a.name.cmp(b.name));
        classes
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
    fn rate_classes_follow_method_then_service_then_write_and_spare_internal_methods() {
        let fast = RateClass::new("fast", 100.0, 100);
        let policy = AccessPolicy::default()
            .rate("a.B", RateClass::READ)
            .rate("/a.B/Login", RateClass::SIGN_IN)
            .internal("a.Internal", &["auth"])
            .rate("a.Internal/Costly", fast);
        assert_eq!(policy.rate_class("/a.B/Login"), Some(RateClass::SIGN_IN));
        assert_eq!(policy.rate_class("/a.B/Get"), Some(RateClass::READ));
        assert_eq!(policy.rate_class("/a.C/Any"), Some(RateClass::WRITE));
        assert_eq!(policy.rate_class("/a.Internal/Any"), None);
        assert_eq!(policy.rate_class("/a.Internal/Costly"), Some(fast));
        assert_eq!(policy.rate_class("/grpc.health.v1.Health/Check"), None);
        let names: Vec<_> = policy.rate_classes().iter().map(|c| c.name).collect();
        assert_eq!(names, ["fast", "read", "sign_in", "write"]);
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
