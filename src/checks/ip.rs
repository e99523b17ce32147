//! Client IP allow and deny lists. The address is the one Envoy determined (the downstream
//! remote address after its own X-Forwarded-For / trusted-hops handling), never a header the
//! client wrote. IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are matched as IPv4.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::{err, ConfigError};
use crate::reject::Reject;

#[derive(Debug, Clone, Default)]
pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// Parses Envoy's `source.address` (`ip:port`, `[v6]:port`, or a bare address).
pub fn parse_source(address: &str) -> Option<IpAddr> {
    let ip = address
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()?;
    Some(canonical(ip))
}

/// IPv4-mapped IPv6 becomes plain IPv4, so one rule covers both spellings.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a rule: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|net| match net {
            // `::ffff:10.0.0.0/104` is written for mapped addresses: keep it matching them.
            IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
                let v4 = v6
                    .addr()
                    .to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
            }
            other => other,
        })
}

/// The key an address is counted under by the lockout: an IPv4 address itself, an IPv6 address
/// by its `/v6_prefix` network (`2001:db8:1:2::/64` by default), because one subscriber usually
/// holds a whole /64 and could otherwise try from 2^64 addresses.
pub fn lockout_key(ip: IpAddr, v6_prefix: u8) -> String {
    match canonical(ip) {
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, v6_prefix.min(128))
            .map(|net| net.trunc().to_string())
            .unwrap_or_else(|_| v6.to_string()),
        v4 => v4.to_string(),
    }
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Deny wins over allow; a non-empty allow list admits only what it lists. An unknown
    /// address is refused when any rule exists (fail closed). `ip` is asked for only when there
    /// are rules (reading the client address is a host call).
    pub fn check(&self, ip: impl FnOnce() -> Option<IpAddr>) -> Result<(), Reject> {
        if self.is_empty() {
            return Ok(());
        }
        let Some(ip) = ip().map(canonical) else {
            return Err(Reject::IpNotAllowed);
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(Reject::IpNotAllowed);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Err(Reject::IpNotAllowed);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration: a policy's `ip` section, and its compile step.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIp {
    /// Addresses or CIDR ranges that may call; when non-empty, every other address is refused.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Addresses or CIDR ranges that are refused, even when `allow` lists them too.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Compiles the `ip` section at `field` (`policies[i].ip`).
pub(crate) fn compile_ip(raw: &RawIp, field: &str) -> Result<IpRules, ConfigError> {
    let mut ip = IpRules::default();
    for (list, out, name) in [
        (&raw.allow, &mut ip.allow, "allow"),
        (&raw.deny, &mut ip.deny, "deny"),
    ] {
        for (j, entry) in list.iter().enumerate() {
            out.push(parse_net(entry).ok_or_else(|| {
                err(
                    format!("{field}.{name}[{j}]"),
                    format!("`{entry}` is not an IP address or CIDR range"),
                )
            })?);
        }
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        IpRules {
            allow: allow.iter().map(|s| parse_net(s).unwrap()).collect(),
            deny: deny.iter().map(|s| parse_net(s).unwrap()).collect(),
        }
    }

    #[test]
    fn allow_and_deny_for_v4_v6_and_mapped_addresses() {
        let r = rules(
            &["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"],
            &["10.9.0.0/16"],
        );
        let ok = |s: &str| r.check(|| parse_source(s)).is_ok();
        assert!(ok("10.1.2.3:5555"));
        assert!(ok("[::ffff:10.1.2.3]:5555"));
        assert!(ok("[2001:db8::1]:443"));
        assert!(ok("127.0.0.1:1"));
        assert!(!ok("10.9.1.1:5555"));
        assert!(!ok("[::ffff:10.9.1.1]:5555"));
        assert!(!ok("192.168.1.1:80"));
        assert!(!ok("[2001:db9::1]:443"));
        assert!(r.check(|| None).is_err());
    }

    #[test]
    fn mapped_rules_cover_plain_ipv4() {
        let r = rules(&["::ffff:192.0.2.0/120"], &[]);
        assert!(r.check(|| parse_source("192.0.2.7:1")).is_ok());
        assert!(r.check(|| parse_source("192.0.3.7:1")).is_err());
    }

    #[test]
    fn ipv6_addresses_of_one_prefix_share_a_lockout_key() {
        let key = |s: &str, prefix| lockout_key(s.parse().unwrap(), prefix);
        assert_eq!(key("2001:db8:1:2::a", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff::1", 64), key("2001:db8:1:2::b", 64));
        assert_ne!(key("2001:db8:1:3::a", 64), key("2001:db8:1:2::a", 64));
        assert_eq!(key("2001:db8:1:3::a", 48), key("2001:db8:1:2::a", 48));
        assert_eq!(key("2001:db8::1", 128), "2001:db8::1/128");
        // IPv4 (also IPv4-mapped) is counted per address.
        assert_eq!(key("10.1.2.3", 64), "10.1.2.3");
        assert_eq!(key("::ffff:10.1.2.3", 64), "10.1.2.3");
    }

    #[test]
    fn malformed_rules_are_refused() {
        for bad in ["10.0.0.0/33", "10.0.0", "abc", "::/129", ""] {
            assert!(parse_net(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn no_rules_admit_everyone() {
        // No rules: the address is not even read.
        assert!(IpRules::default()
            .check(|| unreachable!("the address is read without rules"))
            .is_ok());
    }

    // The `ip` section, compiled through the whole configuration so the paths are the ones an
    // operator sees.

    #[test]
    fn invalid_ip_entries_name_the_entry() {
        let cases = [
            (
                r#"{"policies": [{"name": "a", "signature": false, "ip": {"allow": ["10.0.0.0/8", "10.0.0.0/33"]}}]}"#,
                "policies[0].ip.allow[1]",
            ),
            (
                r#"{"policies": [{"name": "a", "signature": false, "ip": {"deny": ["nope"]}}]}"#,
                "policies[0].ip.deny[0]",
            ),
        ];
        for (json, field) in &cases {
            let e = crate::config::Config::from_json(json.as_bytes(), &|_| None).expect_err(json);
            assert_eq!(&e.field, field, "{e}");
        }
    }
}
