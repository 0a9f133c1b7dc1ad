//! How faults are picked: shares, rule order, headers, the cap on active faults.

use std::collections::BTreeMap;

use super::*;

const GET_USER: &str = "/trellis.user.v1.UserService/GetUser";

fn faults(rules: &[(&str, FaultRule)], allow_headers: bool, max: Option<usize>) -> Arc<Faults> {
    let config = FaultsConfig {
        enabled: true,
        allow_headers,
        max_active_faults: max,
        server: rules
            .iter()
            .map(|(name, rule)| ((*name).to_owned(), rule.clone()))
            .collect::<BTreeMap<_, _>>(),
        ..FaultsConfig::default()
    };
    Faults::for_server(&config, None).expect("faults on")
}

fn abort(code: &str, percent: f64) -> FaultRule {
    FaultRule {
        abort_code: Some(code.to_owned()),
        abort_percent: percent,
        ..FaultRule::default()
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| {
            (
                http::HeaderName::from_static(name),
                value.parse().expect("a header value"),
            )
        })
        .collect()
}

#[test]
fn nothing_is_installed_while_faults_are_off() {
    let off = FaultsConfig {
        server: BTreeMap::from([("r".to_owned(), abort("INTERNAL", 100.0))]),
        allow_headers: true,
        ..FaultsConfig::default()
    };
    assert!(Faults::for_server(&off, None).is_none());
    assert!(Faults::for_peer(&off, "user", None).is_none());
    let on_elsewhere = FaultsConfig {
        enabled: true,
        ..off
    };
    assert!(Faults::for_peer(&on_elsewhere, "user", None).is_some());
    let no_headers = FaultsConfig {
        allow_headers: false,
        ..on_elsewhere
    };
    assert!(Faults::for_peer(&no_headers, "user", None).is_none());
}

#[test]
fn shares_of_0_and_100_percent_are_exact_and_50_is_about_half() {
    let always = faults(&[("a", abort("UNAVAILABLE", 100.0))], false, None);
    let never = faults(&[("a", abort("UNAVAILABLE", 0.0))], false, None);
    let half = faults(&[("a", abort("UNAVAILABLE", 50.0))], false, None);
    let none = HeaderMap::new();
    let mut hits = 0;
    for _ in 0..10_000 {
        let plan = always.plan(GET_USER, &none).expect("always");
        assert_eq!(plan.abort.map(|s| s.code()), Some(Code::Unavailable));
        assert!(never.plan(GET_USER, &none).is_none());
        hits += usize::from(half.plan(GET_USER, &none).is_some());
    }
    // Binomial(10 000, 0.5): 4 500–5 500 is ten standard deviations either way.
    assert!((4_500..=5_500).contains(&hits), "{hits}");
}

#[test]
fn the_first_rule_by_name_gives_each_fault_and_a_rule_picks_only_its_methods() {
    let slow = FaultRule {
        delay: Some(Duration::from_millis(7)),
        ..FaultRule::default()
    };
    let other = FaultRule {
        method: "trellis.auth.v1.AuthService/*".to_owned(),
        ..abort("INTERNAL", 100.0)
    };
    let service = FaultRule {
        method: "trellis.user.v1.UserService/*".to_owned(),
        ..abort("DATA_LOSS", 100.0)
    };
    let method = FaultRule {
        method: "trellis.user.v1.UserService/GetUser".to_owned(),
        ..abort("UNAVAILABLE", 100.0)
    };
    let f = faults(
        &[
            ("b-abort", service),
            ("a-abort", method),
            ("c-slow", slow),
            ("d-other", other),
        ],
        false,
        None,
    );
    let none = HeaderMap::new();
    let plan = f.plan(GET_USER, &none).expect("picked");
    assert_eq!(plan.delay, Some(Duration::from_millis(7)));
    let status = plan.abort.expect("an abort");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("a-abort"), "{status:?}");
    let list = f
        .plan("/trellis.user.v1.UserService/ListUsers", &none)
        .expect("picked");
    assert_eq!(list.abort.map(|s| s.code()), Some(Code::DataLoss));
    let auth = f
        .plan("/trellis.auth.v1.AuthService/Login", &none)
        .expect("picked");
    assert_eq!(auth.delay, Some(Duration::from_millis(7)));
    assert_eq!(auth.abort.map(|s| s.code()), Some(Code::Internal));
}

#[test]
fn headers_ask_for_faults_only_when_allowed_and_are_bounded() {
    let asked = headers(&[(DELAY_HEADER, "99999999999"), (ABORT_HEADER, "8")]);
    // Not allowed: with no rule nothing is even installed, and a rule for another
    // method does not make the headers count.
    let off = FaultsConfig {
        enabled: true,
        ..FaultsConfig::default()
    };
    assert!(Faults::for_server(&off, None).is_none());
    let elsewhere = FaultRule {
        method: "trellis.auth.v1.AuthService/Login".to_owned(),
        ..abort("INTERNAL", 100.0)
    };
    let refused = faults(&[("elsewhere", elsewhere)], false, None);
    assert!(refused.plan(GET_USER, &asked).is_none());
    let allowed = faults(&[], true, None);
    let plan = allowed.plan(GET_USER, &asked).expect("asked for");
    assert_eq!(plan.delay, Some(Duration::from_millis(MAX_DELAY_MS)));
    assert_eq!(plan.abort.map(|s| s.code()), Some(Code::ResourceExhausted));
    for junk in ["0", "17", "-1", "x", "4294967310"] {
        let plan = allowed.plan(GET_USER, &headers(&[(ABORT_HEADER, junk)]));
        assert!(plan.is_none(), "{junk}: no code, no fault");
    }
    let zero = headers(&[(ABORT_HEADER, "14"), (ABORT_PERCENT_HEADER, "0")]);
    assert!(allowed.plan(GET_USER, &zero).is_none());
}

#[test]
fn the_cap_counts_faults_until_their_plans_are_dropped() {
    let f = faults(&[("a", abort("UNAVAILABLE", 100.0))], false, Some(2));
    let none = HeaderMap::new();
    let first = f.plan(GET_USER, &none).expect("slot 1");
    let second = f.plan(GET_USER, &none).expect("slot 2");
    assert!(f.plan(GET_USER, &none).is_none(), "over the cap");
    drop(first);
    let third = f.plan(GET_USER, &none).expect("a slot was given back");
    drop((second, third));
    assert_eq!(f.active.load(Ordering::Acquire), 0);
}
