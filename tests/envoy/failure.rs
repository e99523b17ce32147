//! What happens when edge-warden itself cannot decide, per `failure_policy`: the VM of the
//! proxy-wasm filter crashes (a test build that panics on request, `make wasm-faults`). These
//! tests run the wasm runtime whatever `EDGE_WARDEN_RUNTIME` says: the native module's panics
//! are caught at the ABI boundary instead (`hardening::a_panic_in_the_native_module_is_a_500_and_envoy_keeps_serving`).

use std::time::{Duration, Instant};

use crate::harness::{repo, Envoy, Options, Runtime};

fn faulty_wasm() -> std::path::PathBuf {
    let file = repo().join("target/faults-wasm/wasm32-wasip1/release/edge_warden.wasm");
    assert!(
        file.exists(),
        "no {}: run `make wasm-faults`",
        file.display()
    );
    file
}

/// One worker, so every request meets the VM that crashed.
fn envoy_with_policy(policy: &str) -> Envoy {
    let mut opts = Options {
        runtime: Some(Runtime::Wasm),
        wasm_file: Some(faulty_wasm()),
        concurrency: 1,
        ..Options::default()
    };
    if policy != "FAIL_RELOAD" {
        opts.edits.push((
            "failure_policy: FAIL_RELOAD",
            format!("failure_policy: {policy}"),
        ));
    }
    Envoy::start(opts)
}

fn crash(envoy: &Envoy) -> u16 {
    envoy
        .request("GET", "/health", &[("x-edge-warden-fault", "headers")], b"")
        .status
}

/// Requests Envoy sent to the upstream (its own count).
fn upstream_requests(envoy: &Envoy) -> i64 {
    envoy.cluster_stat("demo_upstream", "upstream_rq_total")
}

#[test]
fn fail_reload_refuses_while_the_vm_is_down_then_serves_again() {
    let envoy = envoy_with_policy("FAIL_RELOAD");
    assert_eq!(envoy.request("GET", "/health", &[], b"").status, 200);
    let sent = upstream_requests(&envoy);
    assert_eq!(crash(&envoy), 503);
    // Until the VM is back: refused, never forwarded unchecked.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refused = 0;
    loop {
        let r = envoy.request("GET", "/orders", &[], b"");
        if r.status != 503 {
            // Back: judged as usual (an unsigned request to a signed route).
            assert_eq!((r.status, r.code()), (401, "missing_signature".into()));
            break;
        }
        refused += 1;
        assert!(Instant::now() < deadline, "the VM was not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        upstream_requests(&envoy),
        sent,
        "nothing reached the upstream"
    );
    eprintln!("refused {refused} requests while the VM was down");
    assert_eq!(envoy.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn fail_closed_refuses_every_request_on_that_worker_until_envoy_restarts() {
    let envoy = envoy_with_policy("FAIL_CLOSED");
    assert_eq!(envoy.request("GET", "/health", &[], b"").status, 200);
    let sent = upstream_requests(&envoy);
    assert_eq!(crash(&envoy), 503);
    // Longer than FAIL_RELOAD takes to come back (about 1 s): still refused.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(envoy.request("GET", "/health", &[], b"").status, 503);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(upstream_requests(&envoy), sent);
}

#[test]
fn fail_open_lets_requests_through_unchecked_which_is_why_no_shipped_config_uses_it() {
    let envoy = envoy_with_policy("FAIL_OPEN");
    let r = envoy.request("GET", "/orders", &[], b"");
    assert_eq!((r.status, r.code()), (401, "missing_signature".into()));
    crash(&envoy);
    let sent = upstream_requests(&envoy);
    // The same unsigned request now reaches the upstream, with no security headers.
    let r = envoy.request("GET", "/orders", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-content-type-options"), None);
    assert_eq!(upstream_requests(&envoy), sent + 1);
}
