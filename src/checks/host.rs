//! Trusted hosts: the `Host` / `:authority` must name a host this service answers for, so that
//! a request routed here by a forged Host header (cache poisoning, password-reset links) stops.

use crate::checks::cors::split_host_port;
use crate::config::{err, ConfigError};
use crate::reject::Reject;

/// One entry of `trusted_hosts`: `api.example.com`, `*.example.com`, optionally `:port`.
/// Without a port any port matches; with one, only that port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, &'static str> {
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (host, port) =
            split_host_port(rest).ok_or("is not a host name such as api.example.com[:port]")?;
        Ok(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        if self.port.is_some() && self.port != port {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(self.host.as_str())
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// Checks the request authority against the patterns.
pub fn check(patterns: &[HostPattern], authority: Option<&[u8]>) -> Result<(), Reject> {
    let parsed = authority
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(split_host_port);
    match parsed {
        Some((host, port)) if patterns.iter().any(|p| p.matches(&host, port)) => Ok(()),
        _ => Err(Reject::HostNotAllowed),
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration: a policy's `trusted_hosts` list, and its compile step.

/// Compiles the `trusted_hosts` list at `field` (`policies[i].trusted_hosts`).
pub(crate) fn compile_trusted_hosts(
    raw: &[String],
    field: &str,
) -> Result<Vec<HostPattern>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(j, h)| {
            HostPattern::parse(h)
                .map_err(|why| err(format!("{field}[{j}]"), format!("`{h}` {why}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<HostPattern> {
        list.iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn exact_wildcard_and_port_rules() {
        let p = patterns(&["api.example.com", "*.example.org", "localhost:10000"]);
        for ok in [
            "api.example.com",
            "API.example.com:8443",
            "a.example.org",
            "a.b.example.org:1",
            "localhost:10000",
        ] {
            assert_eq!(check(&p, Some(ok.as_bytes())), Ok(()), "{ok}");
        }
        for bad in [
            "example.com",
            "evil.com",
            "api.example.com.evil.com",
            "example.org",
            "badexample.org",
            "localhost",
            "localhost:10001",
            "api.example.com.",
            "user@api.example.com",
            "",
        ] {
            assert_eq!(
                check(&p, Some(bad.as_bytes())),
                Err(Reject::HostNotAllowed),
                "{bad}"
            );
        }
        assert_eq!(check(&p, None), Err(Reject::HostNotAllowed));
    }

    #[test]
    fn ipv6_hosts_are_matched_with_brackets() {
        let p = patterns(&["[::1]:10000"]);
        assert_eq!(check(&p, Some(b"[::1]:10000")), Ok(()));
        assert_eq!(check(&p, Some(b"[::1]:10001")), Err(Reject::HostNotAllowed));
    }

    // The `trusted_hosts` list, compiled through the whole configuration so the paths are the ones
    // an operator sees.

    #[test]
    fn a_bad_trusted_host_names_the_entry() {
        let json =
            r#"{"policies": [{"name": "a", "signature": false, "trusted_hosts": ["http://x"]}]}"#;
        let e = crate::config::Config::from_json(json.as_bytes(), &|_| None).expect_err(json);
        assert_eq!(e.field, "policies[0].trusted_hosts[0]", "{e}");
    }
}
