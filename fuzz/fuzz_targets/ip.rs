//! Client-address handling: `ip::parse_source` (Envoy's `source.address`), `ip::parse_net`
//! (allow/deny rules), `ip::lockout_key` (the brute-force counter's key) and `IpRules::check`.
//!
//! Input: `source\nnet\n` then bytes each used as an IPv6 lockout prefix (plus fixed edges).
//! Checks: parsed addresses are canonical (IPv4-mapped becomes IPv4) and round-trip as text and
//! as `ip:port`; parsed rules round-trip; a rule admits its own address and, as allow or deny,
//! agrees with `contains`; a lockout key is the IPv4 address itself or the IPv6 `/prefix`
//! network that contains the address; refusals are well-formed 4xx.
#![no_main]

mod common;

use std::net::{IpAddr, SocketAddr};

use edge_warden::checks::ip::{self, IpRules};
use libfuzzer_sys::fuzz_target;

fn is_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

fuzz_target!(|data: &[u8]| {
    let (fields, rest) = common::fields::<2>(data);
    let [source, net] = fields;
    let source = std::str::from_utf8(source).ok().and_then(ip::parse_source);
    let net = std::str::from_utf8(net).ok().and_then(ip::parse_net);

    if let Some(ip) = source {
        assert_eq!(
            ip::canonical(ip),
            ip,
            "parse_source returned a mapped address"
        );
        assert_eq!(ip::parse_source(&ip.to_string()), Some(ip));
        assert_eq!(
            ip::parse_source(&SocketAddr::new(ip, 443).to_string()),
            Some(ip)
        );
        let prefixes = [0u8, 1, 16, 48, 64, 96, 127, 128, 129, 255];
        for &prefix in prefixes.iter().chain(rest.iter().take(4)) {
            let key = ip::lockout_key(ip, prefix);
            if ip.is_ipv4() {
                assert_eq!(key, ip.to_string());
            } else {
                let net = ip::parse_net(&key)
                    .unwrap_or_else(|| panic!("lockout key {key:?} is not a network"));
                assert!(net.addr().is_ipv6(), "{key}");
                assert_eq!(net.prefix_len(), prefix.min(128), "{key}");
                assert!(net.contains(&ip), "{key} does not contain {ip}");
                assert_eq!(key, net.to_string());
            }
        }
    }
    assert!(IpRules::default()
        .check(|| panic!("read the address without rules"))
        .is_ok());

    let Some(net) = net else { return };
    assert_eq!(
        ip::parse_net(&net.to_string()),
        Some(net),
        "{net} does not round-trip"
    );
    let allow = IpRules {
        allow: vec![net],
        deny: Vec::new(),
    };
    let deny = IpRules {
        allow: Vec::new(),
        deny: vec![net],
    };
    let both = IpRules {
        allow: vec![net],
        deny: vec![net],
    };
    for rules in [&allow, &deny, &both] {
        match rules.check(|| None) {
            Ok(()) => panic!("an unknown address passed {rules:?}"),
            Err(why) => common::check_reject(&why),
        }
    }
    // A V6 rule over IPv4-mapped addresses with a prefix under 96 stays V6, while every address
    // is canonicalised to IPv4 first: such a rule never sees its own (mapped) network address.
    if !is_mapped(net.addr()) {
        assert!(
            allow.check(|| Some(net.addr())).is_ok(),
            "{net} does not admit its own address"
        );
        assert!(
            deny.check(|| Some(net.addr())).is_err(),
            "{net} does not deny its own address"
        );
    }
    if let Some(ip) = source {
        let inside = net.contains(&ip);
        assert_eq!(
            allow.check(|| Some(ip)).is_ok(),
            inside,
            "allow {net} vs {ip}"
        );
        assert_eq!(
            deny.check(|| Some(ip)).is_ok(),
            !inside,
            "deny {net} vs {ip}"
        );
        if let Err(why) = both.check(|| Some(ip)) {
            common::check_reject(&why);
        } else {
            panic!("deny lost to allow for {net} and {ip}");
        }
    }
});
