//! The replay cache at the filter's own rate, through a real Envoy: unique signed nonces as fast
//! as the clients can send them, for a whole window, are never refused for want of room, and a
//! nonce claimed before the flood is still caught after it.

use crate::harness::{fresh_nonce, now, Client, Envoy, Options, Signed, SECRET};

/// A short window, so that a whole one fits in a test of a few seconds.
const WINDOW: u64 = 5;
/// More client loops than Envoy has workers, so that Envoy rather than one client sets the pace.
const CLIENTS: usize = 4;
/// Under /health: the one route envoy.yaml does not rate-limit, so only edge-warden decides
/// (the plugin configuration below signs every path).
const PATH: &str = "/health/flood";

#[test]
fn a_whole_window_of_unique_nonces_at_full_speed_is_never_refused_for_room() {
    // The default replay capacity, with the short window.
    let config = format!(
        r#"{{
      "signature": {{"secrets": [{{"id": "primary", "env": "HMAC_SHARED_SECRET"}}],
                    "window_seconds": {WINDOW}}},
      "policies": [{{"name": "signed"}}]
    }}"#
    );
    let envoy = Envoy::start(Options::with_config(&config));
    let client = Client::new(envoy.port);
    let start = now();
    // Claimed before the flood: a request signed now, and one signed a whole window ahead,
    // whose record must outlive the flood.
    let early = Signed::at(SECRET, b"early", start, &fresh_nonce());
    let ahead = Signed::at(SECRET, b"ahead", start + WINDOW, &fresh_nonce());
    for (s, body) in [(&early, b"early"), (&ahead, b"ahead")] {
        let r = client.request("POST", PATH, &s.headers(), body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    // Each client signs and sends fresh nonces until a whole window has passed since `start`,
    // and keeps its last request to replay.
    let results: Vec<(u64, Vec<String>, Signed)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| {
                    let client = Client::new(envoy.port);
                    let (mut ok, mut refused) = (0, Vec::new());
                    let mut last = None;
                    while now() <= start + WINDOW {
                        let s = Signed::new(SECRET, b"flood");
                        let r = client.request("POST", PATH, &s.headers(), b"flood");
                        if r.status == 200 {
                            ok += 1;
                        } else {
                            refused.push(format!(
                                "{} {}",
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            ));
                        }
                        last = Some(s);
                    }
                    (ok, refused, last.expect("at least one request"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: u64 = results.iter().map(|(ok, _, _)| ok).sum();
    let refused: Vec<&String> = results.iter().flat_map(|(_, r, _)| r).collect();
    eprintln!(
        "{ok} unique signed nonces in {} s from {CLIENTS} clients",
        now() - start
    );
    assert!(
        refused.is_empty(),
        "{} of {} refused, e.g. {:?}",
        refused.len(),
        ok as usize + refused.len(),
        &refused[..refused.len().min(3)]
    );

    // The request signed a window ahead is still remembered after a whole window of flood, and
    // so is each client's last one...
    let r = client.request("POST", PATH, &ahead.headers(), b"ahead");
    assert_eq!((r.status, r.code()), (401, "nonce_replayed".into()));
    for (_, _, last) in &results {
        let r = client.request("POST", PATH, &last.headers(), b"flood");
        assert_eq!((r.status, r.code()), (401, "nonce_replayed".into()));
    }
    // ...while the one signed at the start has left the window, where the timestamp check
    // refuses it before the cache is asked.
    let r = client.request("POST", PATH, &early.headers(), b"early");
    assert_eq!(
        (r.status, r.code()),
        (401, "timestamp_out_of_window".into())
    );

    // Memory: the gauge counts the records held, at most one per accepted nonce (fewer once
    // ended slices are dropped), within the default's bound of 7,000,000.
    let entries = envoy
        .settled_stat("edge_warden_replay_cache_entries")
        .expect("gauge");
    let accepted = ok as i64 + 2;
    assert!((1..=accepted).contains(&entries), "{entries} of {accepted}");
    assert_eq!(envoy.total("edge_warden_allowed_total"), Some(accepted));
}
