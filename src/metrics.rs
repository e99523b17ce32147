//! What edge-warden counts, and the series both runtimes export for one configuration.
//!
//! The engine counts [`Metric`]s; a [`Catalog`] (built once per configuration) turns each into
//! the index of one series, so an adapter keeps its counts in a flat array and never builds a
//! name on the request path. Labels come only from the configuration (policy names) and from
//! [`Reject::CODES`], never from a request, so the number of series is bounded by the
//! configuration.
//!
//! Both runtimes show the same series in `/stats/prometheus`, e.g.
//! `envoy_edge_warden_rejected_total{code="invalid_signature",policy="signed",runtime="wasm"}`:
//! each runtime defines one metric per series whose name carries the labels
//! (`edge_warden_rejected_total.code.invalid_signature.policy.signed`), and Envoy takes them out
//! again with the `stats_config.stats_tags` of the shipped configurations ([`STATS_TAGS`]).
//! proxy-wasm has no labels at all. The dynamic-module ABI has them, but Envoy 1.40 prints
//! labelled native metrics as `envoy_dynamicmodulescustom_<name>` where wasm ones are `<name>`;
//! through the same tag regexes both print `envoy_edge_warden_rejected_total{...}`, with a
//! `runtime` label. `/stats` shows the dotted name on both runtimes.

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::reject::Reject;

/// One thing the engine counts. Labels are indexes and static codes: counting never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// A request let through to the upstream (every check passed), by policy.
    Allowed { policy: Option<usize> },
    /// A request refused, by its stable code and policy (`None`: refused before a policy was
    /// selected).
    Rejected {
        code: &'static str,
        policy: Option<usize>,
    },
    /// A failed check that a policy in report mode let through, by code and policy.
    Reported {
        code: &'static str,
        policy: Option<usize>,
    },
    /// A CORS preflight answered by edge-warden.
    PreflightAnswered { policy: Option<usize> },
    /// A verified nonce claimed in this Envoy's replay cache.
    NonceClaimed { policy: Option<usize> },
    /// A stored response replayed for a duplicate idempotency key.
    IdempotentReplay { policy: Option<usize> },
    /// A failed authentication that brought its address to `lockout.max_failures` here.
    LockoutStarted,
    /// Nonces held by the replay cache (a gauge: deltas may be negative).
    ReplayEntries,
    /// Calls made to the state service.
    StateCalls,
    /// Calls that brought no usable answer in time.
    StateUnavailable,
    /// Requests let through without an answer (`failure_mode: fail_open`).
    StateFailedOpen,
}

/// A metric family: one name, its label names, and whether it is a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub labels: &'static [&'static str],
    pub gauge: bool,
}

const fn family(name: &'static str, labels: &'static [&'static str], gauge: bool) -> Family {
    Family {
        name,
        labels,
        gauge,
    }
}

pub const ALLOWED: Family = family("edge_warden_allowed_total", &["policy"], false);
pub const REJECTED: Family = family("edge_warden_rejected_total", &["code", "policy"], false);
pub const REPORTED: Family = family("edge_warden_reported_total", &["code", "policy"], false);
pub const PREFLIGHTS: Family = family("edge_warden_preflights_total", &["policy"], false);
pub const NONCES: Family = family("edge_warden_nonces_claimed_total", &["policy"], false);
pub const REPLAYS: Family = family("edge_warden_idempotent_replays_total", &["policy"], false);
pub const LOCKOUTS: Family = family("edge_warden_lockouts_started_total", &[], false);
pub const REPLAY_ENTRIES: Family = family("edge_warden_replay_cache_entries", &[], true);
pub const STATE_CALLS: Family = family("edge_warden_state_calls", &[], false);
pub const STATE_UNAVAILABLE: Family = family("edge_warden_state_unavailable", &[], false);
pub const STATE_FAILED_OPEN: Family = family("edge_warden_state_failed_open", &[], false);
/// Always 1, labelled with the loaded configuration's [`config_hash`].
pub const CONFIG_INFO: Family = family("edge_warden_config_info", &["hash"], true);

/// Every family, in the order of their series in a [`Catalog`].
pub const FAMILIES: [Family; 12] = [
    ALLOWED,
    REJECTED,
    REPORTED,
    PREFLIGHTS,
    NONCES,
    REPLAYS,
    LOCKOUTS,
    REPLAY_ENTRIES,
    STATE_CALLS,
    STATE_UNAVAILABLE,
    STATE_FAILED_OPEN,
    CONFIG_INFO,
];

/// The `policy` label of a request refused before any policy was selected.
pub const NO_POLICY: &str = "-";

/// The tag regexes that turn both runtimes' dotted names back into labels; the shipped Envoy
/// configurations carry them under `stats_config.stats_tags` (a test checks each). `runtime`
/// takes the runtime's stat namespace (`wasmcustom.`, `dynamicmodulescustom.`) out of the name
/// as a label (`wasm`, `dynamicmodules`), so that Envoy prints one series name for both.
pub const STATS_TAGS: [(&str, &str); 4] = [
    (
        "code",
        r"^(?:wasm|dynamicmodules)custom\.edge_warden_[a-z_]+(\.code\.([a-z_]+))",
    ),
    (
        "policy",
        r"^(?:wasm|dynamicmodules)custom\.edge_warden_[a-z_]+(?:\.code\.[a-z_]+)?(\.policy\.([A-Za-z0-9_-]+))$",
    ),
    (
        "hash",
        r"^(?:wasm|dynamicmodules)custom\.edge_warden_config_info(\.hash\.([0-9a-f]+))$",
    ),
    ("runtime", r"^((wasm|dynamicmodules)custom\.)edge_warden_"),
];

/// One series: its family and label values (in the family's label order). Every series of a
/// configuration is defined when it loads, at 0, so a rate over it sees the first count (and the
/// native ABI allows no definitions later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub family: Family,
    pub values: Vec<String>,
}

impl Series {
    /// The name with the labels in it, as the wasm runtime defines it and `/stats` shows it on
    /// both runtimes: `edge_warden_rejected_total.code.invalid_signature.policy.signed`.
    pub fn dotted_name(&self) -> String {
        let mut name = self.family.name.to_string();
        for (label, value) in self.family.labels.iter().zip(&self.values) {
            name.push('.');
            name.push_str(label);
            name.push('.');
            name.push_str(value);
        }
        name
    }
}

/// Every series of one configuration, indexed by [`Catalog::index`].
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Policies plus the `-` slot (slot 0).
    slots: usize,
    series: Vec<Series>,
    hash: String,
}

impl Catalog {
    pub fn new(config: &Config, json: &[u8]) -> Self {
        let hash = config_hash(json);
        let mut labels = vec![NO_POLICY.to_string()];
        labels.extend(config.policies.iter().map(|p| policy_label(&p.name)));
        let slots = labels.len();
        let mut series = Vec::new();
        let per_policy = |series: &mut Vec<Series>, family: Family| {
            for label in &labels {
                series.push(Series {
                    family,
                    values: vec![label.clone()],
                });
            }
        };
        per_policy(&mut series, ALLOWED);
        for family in [REJECTED, REPORTED] {
            for code in Reject::CODES {
                for label in &labels {
                    series.push(Series {
                        family,
                        values: vec![code.to_string(), label.clone()],
                    });
                }
            }
        }
        per_policy(&mut series, PREFLIGHTS);
        per_policy(&mut series, NONCES);
        per_policy(&mut series, REPLAYS);
        for family in [
            LOCKOUTS,
            REPLAY_ENTRIES,
            STATE_CALLS,
            STATE_UNAVAILABLE,
            STATE_FAILED_OPEN,
        ] {
            series.push(Series {
                family,
                values: Vec::new(),
            });
        }
        series.push(Series {
            family: CONFIG_INFO,
            values: vec![hash.clone()],
        });
        Self {
            slots,
            series,
            hash,
        }
    }

    pub fn series(&self) -> &[Series] {
        &self.series
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The configuration's short hash (the `hash` label of `edge_warden_config_info`).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The index of `edge_warden_config_info`.
    pub fn config_info(&self) -> usize {
        self.series.len().saturating_sub(1)
    }

    /// The series a metric counts into. A policy index past the configuration's counts as `-`
    /// (an adapter bug, not a client's doing), and an unknown code as `internal_error`.
    pub fn index(&self, metric: Metric) -> usize {
        let slots = self.slots;
        let slot = |policy: Option<usize>| match policy {
            Some(p) if p + 1 < slots => p + 1,
            _ => 0,
        };
        let codes = Reject::CODES.len();
        let rejected = slots;
        let reported = rejected + codes * slots;
        let preflights = reported + codes * slots;
        let nonces = preflights + slots;
        let replays = nonces + slots;
        let singles = replays + slots;
        let code_index = |code: &str| {
            Reject::CODES
                .iter()
                .position(|c| *c == code)
                .or_else(|| Reject::CODES.iter().position(|c| *c == "internal_error"))
                .unwrap_or(0)
        };
        match metric {
            Metric::Allowed { policy } => slot(policy),
            Metric::Rejected { code, policy } => rejected + code_index(code) * slots + slot(policy),
            Metric::Reported { code, policy } => reported + code_index(code) * slots + slot(policy),
            Metric::PreflightAnswered { policy } => preflights + slot(policy),
            Metric::NonceClaimed { policy } => nonces + slot(policy),
            Metric::IdempotentReplay { policy } => replays + slot(policy),
            Metric::LockoutStarted => singles,
            Metric::ReplayEntries => singles + 1,
            Metric::StateCalls => singles + 2,
            Metric::StateUnavailable => singles + 3,
            Metric::StateFailedOpen => singles + 4,
        }
    }
}

/// The first 8 hex digits of the SHA-256 of the plugin JSON (surrounding whitespace aside):
/// which configuration an instance runs. The secrets' values come from the environment and are
/// not part of it.
pub fn config_hash(json: &[u8]) -> String {
    let digest = Sha256::digest(json.trim_ascii());
    hex::encode(digest.get(..4).unwrap_or_default())
}

/// A policy name as a label value: letters, digits, `_` and `-` stay, anything else becomes `_`
/// (the wasm runtime's names are split at dots, and the tag regexes match this set).
pub fn policy_label(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
      "policies": [
        { "name": "health", "match": { "path_prefix": "/health" }, "signature": false },
        { "name": "api.v1", "signature": false }
      ]
    }"#;

    fn catalog() -> Catalog {
        let config = Config::from_json(JSON.as_bytes(), &|_| None).unwrap();
        Catalog::new(&config, JSON.as_bytes())
    }

    fn name_of(catalog: &Catalog, metric: Metric) -> String {
        catalog.series()[catalog.index(metric)].dotted_name()
    }

    #[test]
    fn every_metric_lands_in_its_own_series() {
        let c = catalog();
        let policy = Some(1);
        let metrics = [
            Metric::Allowed { policy },
            Metric::Rejected {
                code: "invalid_signature",
                policy,
            },
            Metric::Rejected {
                code: "invalid_path",
                policy: None,
            },
            Metric::PreflightAnswered { policy },
            Metric::NonceClaimed { policy },
            Metric::IdempotentReplay { policy },
            Metric::LockoutStarted,
            Metric::ReplayEntries,
            Metric::StateCalls,
            Metric::StateUnavailable,
            Metric::StateFailedOpen,
        ];
        let mut indexes: Vec<usize> = metrics.iter().map(|m| c.index(*m)).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), metrics.len());
        assert!(indexes.iter().all(|i| *i < c.len()));
        assert_ne!(c.index(Metric::StateFailedOpen), c.config_info());
    }

    #[test]
    fn names_carry_the_labels_in_family_order() {
        let c = catalog();
        assert_eq!(
            name_of(
                &c,
                Metric::Rejected {
                    code: "invalid_signature",
                    policy: Some(0)
                }
            ),
            "edge_warden_rejected_total.code.invalid_signature.policy.health"
        );
        assert_eq!(
            name_of(&c, Metric::Allowed { policy: Some(1) }),
            "edge_warden_allowed_total.policy.api_v1"
        );
        assert_eq!(
            name_of(
                &c,
                Metric::Rejected {
                    code: "no_matching_policy",
                    policy: None
                }
            ),
            "edge_warden_rejected_total.code.no_matching_policy.policy.-"
        );
        assert_eq!(
            name_of(&c, Metric::StateUnavailable),
            "edge_warden_state_unavailable"
        );
        assert_eq!(
            c.series()[c.config_info()].dotted_name(),
            format!("edge_warden_config_info.hash.{}", c.hash())
        );
    }

    #[test]
    fn every_code_has_a_series_for_every_policy() {
        let c = catalog();
        for code in Reject::CODES {
            for policy in [None, Some(0), Some(1)] {
                let series = &c.series()[c.index(Metric::Rejected { code, policy })];
                assert_eq!(series.family, REJECTED);
                assert_eq!(series.values[0], code);
            }
        }
    }

    #[test]
    fn an_unknown_code_or_policy_counts_somewhere_safe() {
        let c = catalog();
        assert_eq!(
            name_of(
                &c,
                Metric::Rejected {
                    code: "no_such_code",
                    policy: Some(7)
                }
            ),
            "edge_warden_rejected_total.code.internal_error.policy.-"
        );
    }

    #[test]
    fn the_hash_ignores_surrounding_whitespace_and_changes_with_the_content() {
        assert_eq!(config_hash(b"{\"a\":1}"), config_hash(b"\n  {\"a\":1}\n"));
        assert_ne!(config_hash(b"{\"a\":1}"), config_hash(b"{\"a\":2}"));
        assert_eq!(config_hash(b"{}").len(), 8);
        assert!(config_hash(b"{}").bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn policy_labels_keep_only_what_a_name_segment_may_hold() {
        assert_eq!(policy_label("signed"), "signed");
        assert_eq!(policy_label("api.v1 beta/é"), "api_v1_beta__");
        assert_eq!(policy_label("up-load_2"), "up-load_2");
    }

    #[test]
    fn the_tag_regexes_name_the_labels_of_the_families() {
        let tags: Vec<&str> = STATS_TAGS.iter().map(|(t, _)| *t).collect();
        for family in FAMILIES {
            for label in family.labels {
                assert!(tags.contains(label), "{label} has no stats_tags regex");
            }
        }
    }
    /// Envoy's tag extraction, as its docs describe it: the first group is cut out of the name,
    /// the second is the tag's value.
    #[test]
    fn the_tag_regexes_turn_every_dotted_name_back_into_its_family_and_labels() {
        let c = catalog();
        let regexes: Vec<(&str, regex_lite::Regex)> = STATS_TAGS
            .iter()
            .map(|(tag, re)| (*tag, regex_lite::Regex::new(re).unwrap()))
            .collect();
        for (namespace, runtime) in [
            ("wasmcustom", "wasm"),
            ("dynamicmodulescustom", "dynamicmodules"),
        ] {
            for series in c.series() {
                let full = format!("{namespace}.{}", series.dotted_name());
                let mut cuts = Vec::new();
                let mut tags = Vec::new();
                for (tag, re) in &regexes {
                    if let Some(m) = re.captures(&full) {
                        let cut = m.get(1).unwrap();
                        cuts.push(cut.range());
                        tags.push((tag.to_string(), m.get(2).unwrap().as_str().to_string()));
                    }
                }
                cuts.sort_by_key(|r| std::cmp::Reverse(r.start));
                let mut rest = full.clone();
                for cut in cuts {
                    rest.replace_range(cut, "");
                }
                assert_eq!(rest, series.family.name, "{full}");
                let mut expected: Vec<(String, String)> = series
                    .family
                    .labels
                    .iter()
                    .map(|l| l.to_string())
                    .zip(series.values.iter().cloned())
                    .collect();
                expected.push(("runtime".to_string(), runtime.to_string()));
                assert_eq!(tags, expected, "{full}");
            }
        }
    }
}
