//! What ships around the filter: every Envoy config under envoy/ validates with this Envoy, the
//! fleet's docker-compose stack references files that exist, and the Istio manifest carries a
//! plugin configuration the filter accepts. (No docker engine runs here: nothing is started.)

use std::path::Path;
use std::process::Command;

use crate::harness::{certs, native_module_dir, plugin_config_of, repo, to_native, SECRET};

/// YAML (all documents) as JSON, through PyYAML in the project venv.
pub fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(repo().join(".venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python with PyYAML (make deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn every_envoy_config_under_envoy_validates() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let mut validated = Vec::new();
    for entry in std::fs::read_dir(repo().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.contains("static_resources:") {
            continue;
        }
        // Paths as a local run sees them: the built .wasm and a certificate directory.
        let text = text
            .replace(
                "/etc/envoy/edge_warden.wasm",
                "target/wasm32-wasip1/release/edge_warden.wasm",
            )
            .replace(
                "filename: certs/",
                &format!("filename: {}/", dir.path().display()),
            );
        let rendered = dir.path().join(path.file_name().unwrap());
        std::fs::write(&rendered, text).unwrap();
        let out = Command::new(repo().join(".venv/bin/envoy"))
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&rendered)
            .current_dir(repo())
            .env("HMAC_SHARED_SECRET", SECRET)
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_module_dir())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && log.contains("OK"),
            "{}:\n{log}",
            path.display()
        );
        validated.push(path.file_name().unwrap().to_string_lossy().to_string());
    }
    validated.sort();
    assert_eq!(
        validated,
        [
            "envoy-fleet-local.yaml",
            "envoy-fleet.yaml",
            "envoy-native.yaml",
            "envoy-tls.yaml",
            "envoy.yaml"
        ]
    );
}

#[test]
fn the_native_config_is_envoy_yaml_with_the_dynamic_module_in_place_of_the_wasm_filter() {
    // What the tests run natively is what ships: envoy-native.yaml, past its header comment,
    // is envoy.yaml with only the filter block swapped (so also the same plugin configuration).
    let body = |text: &str| -> String {
        text.lines()
            .skip_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let shipped = std::fs::read_to_string(repo().join("envoy/envoy-native.yaml")).unwrap();
    let derived = to_native(&std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap());
    assert_eq!(body(&shipped), body(&derived));
    assert_eq!(
        plugin_config_of("envoy/envoy-native.yaml"),
        plugin_config_of("envoy/envoy.yaml")
    );
}

/// A plugin configuration (the `value: |` block) as JSON.
fn plugin_json(file: &str) -> serde_json::Value {
    serde_json::from_str(&plugin_config_of(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The names of the clusters an Envoy config defines statically.
fn cluster_names(config: &serde_json::Value) -> Vec<&str> {
    config["static_resources"]["clusters"]
        .as_array()
        .expect("static clusters")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// The fleet configs' plugin configuration is envoy.yaml's plus exactly `remote_state`, which
/// names a cluster the file defines: HTTP/2 (gRPC), health-checked over grpc.health.v1.
fn assert_fleet_plugin_configuration(file: &str) -> serde_json::Value {
    let mut fleet = plugin_json(file);
    let remote = fleet
        .as_object_mut()
        .unwrap()
        .remove("remote_state")
        .unwrap_or_else(|| panic!("{file} has no remote_state"));
    assert_eq!(fleet, plugin_json("envoy/envoy.yaml"), "{file}");
    let cluster = remote["cluster"].as_str().expect("remote_state.cluster");
    let config = &yaml_docs(&repo().join(file))[0];
    assert!(
        cluster_names(config).contains(&cluster),
        "{file}: remote_state.cluster `{cluster}` is not one of its clusters"
    );
    let state = config["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap();
    let options = &state["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(
        options["explicit_http_config"]["http2_protocol_options"].is_object(),
        "{file}: cluster {cluster} must speak HTTP/2 (gRPC)"
    );
    assert!(
        state["health_checks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| h["grpc_health_check"].is_object()),
        "{file}: cluster {cluster} has no gRPC health check"
    );
    // The configuration the filter would load, with its remote_state.
    let mut with_remote = fleet;
    with_remote["remote_state"] = remote.clone();
    let lookup = |name: &str| (name == "HMAC_SHARED_SECRET").then(|| SECRET.to_string());
    edge_warden::config::Config::from_json(&serde_json::to_vec(&with_remote).unwrap(), &lookup)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    remote
}

#[test]
fn the_fleet_config_carries_the_same_plugin_configuration() {
    let remote = assert_fleet_plugin_configuration("envoy/envoy-fleet.yaml");
    assert_eq!(
        remote,
        serde_json::json!({ "cluster": "edge_warden_state", "timeout_ms": 50 })
    );
}

/// Every `google.protobuf.StringValue` that holds JSON, as that JSON without `remote_state`.
fn without_remote_state(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("@type").and_then(|t| t.as_str())
                == Some("type.googleapis.com/google.protobuf.StringValue")
            {
                if let Some(serde_json::Value::String(text)) = map.get("value") {
                    if let Ok(mut json) = serde_json::from_str::<serde_json::Value>(text) {
                        if let Some(obj) = json.as_object_mut() {
                            obj.remove("remote_state");
                        }
                        map.insert("value".into(), json);
                    }
                }
            }
            map.values_mut().for_each(without_remote_state);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_remote_state),
        _ => {}
    }
}

#[test]
fn the_local_fleet_config_is_envoy_yaml_with_remote_state_and_the_state_cluster() {
    // What `make run-fleet` starts twice: envoy.yaml (listener, filter chain, local rate limits,
    // admin) with only the plugin configuration's remote_state and its loopback cluster added.
    let remote = assert_fleet_plugin_configuration("envoy/envoy-fleet-local.yaml");
    let cluster = remote["cluster"].as_str().unwrap();
    let mut local = yaml_docs(&repo().join("envoy/envoy-fleet-local.yaml")).remove(0);
    let clusters = local["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap();
    let at = clusters.iter().position(|c| c["name"] == cluster).unwrap();
    let state = clusters.remove(at);
    assert_eq!(state["type"], "STATIC");
    assert_eq!(
        state["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"],
        serde_json::json!({ "address": "127.0.0.1", "port_value": 50051 })
    );
    let mut base = yaml_docs(&repo().join("envoy/envoy.yaml")).remove(0);
    without_remote_state(&mut local);
    without_remote_state(&mut base);
    assert_eq!(local, base);
    // scripts/run-fleet.sh renders the second instance by moving exactly these two ports.
    let text = std::fs::read_to_string(repo().join("envoy/envoy-fleet-local.yaml")).unwrap();
    assert_eq!(text.matches("port_value: 10000 ").count(), 1);
    assert_eq!(text.matches("port_value: 9901 ").count(), 1);
    let script = std::fs::read_to_string(repo().join("scripts/run-fleet.sh")).unwrap();
    assert!(script.contains("port_value: 10000 /port_value: 10001 "));
    assert!(script.contains("port_value: 9901 /port_value: 9902 "));
}

#[test]
fn the_compose_stack_parses_and_references_files_that_exist() {
    let envoy_dir = repo().join("envoy");
    let compose = &yaml_docs(&envoy_dir.join("docker-compose.yaml"))[0];
    let services = compose["services"].as_object().expect("services");
    for name in [
        "envoy",
        "envoy-b",
        "ratelimit",
        "state",
        "redis",
        "upstream",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    let depends = |service: &str| -> Vec<&str> {
        compose["services"][service]["depends_on"]
            .as_array()
            .unwrap_or_else(|| panic!("{service} depends on nothing"))
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect()
    };
    // Two Envoys with the same config, on host ports of their own, both reaching the state service.
    let mut published = Vec::new();
    for envoy in ["envoy", "envoy-b"] {
        let service = &compose["services"][envoy];
        assert!(service["image"]
            .as_str()
            .unwrap()
            .starts_with("envoyproxy/envoy:v1.40"));
        assert_eq!(service["volumes"], compose["services"]["envoy"]["volumes"]);
        for needed in ["ratelimit", "state", "upstream"] {
            assert!(
                depends(envoy).contains(&needed),
                "{envoy} must depend on {needed}"
            );
        }
        published.push(service["ports"][0].as_str().unwrap());
    }
    assert_eq!(published, ["10000:10000", "10001:10000"]);
    // edge-warden-state, built from the repository, listening where envoy-fleet.yaml's
    // edge_warden_state cluster (`state:50051`) sends, on the shared Redis.
    assert_eq!(depends("state"), ["redis"]);
    let state = &compose["services"]["state"];
    let args: Vec<&str> = state["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        ["--listen", "0.0.0.0:50051", "--redis", "redis://redis:6379"]
    );
    let fleet_config = &yaml_docs(&envoy_dir.join("envoy-fleet.yaml"))[0];
    let state_cluster = fleet_config["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "edge_warden_state")
        .expect("edge_warden_state cluster");
    assert_eq!(
        state_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"],
        serde_json::json!({ "address": "state", "port_value": 50051 })
    );
    assert!(compose["services"]["ratelimit"]["image"]
        .as_str()
        .unwrap()
        .starts_with("envoyproxy/ratelimit"));
    // Every bind mount's source exists (the .wasm once `make wasm` ran, as here).
    let mut mounts = 0;
    for service in services.values() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                envoy_dir.join(source).exists(),
                "missing mount source {source}"
            );
            mounts += 1;
        }
    }
    // Two per Envoy (config and .wasm), one for the ratelimit config.
    assert_eq!(mounts, 5);
    for service in ["upstream", "state"] {
        let build = &compose["services"][service]["build"];
        let context = envoy_dir.join(build["context"].as_str().unwrap());
        assert!(
            context.join(build["dockerfile"].as_str().unwrap()).exists(),
            "{service}: no Dockerfile"
        );
    }
    // The state image: the service built from the workspace on the official Rust image, run on
    // Debian slim as a non-root user.
    let dockerfile = std::fs::read_to_string(envoy_dir.join("Dockerfile.state")).unwrap();
    assert!(dockerfile.contains("FROM rust:1"));
    assert!(dockerfile.contains("cargo build --release --locked -p edge-warden-state"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains("USER 10001"));

    // The ratelimit service's domain is the one Envoy sends, with the four tiers and hourly limits.
    let rl = &yaml_docs(&envoy_dir.join("ratelimit/config.yaml"))[0];
    assert_eq!(rl["domain"], "edge-warden");
    let fleet = std::fs::read_to_string(envoy_dir.join("envoy-fleet.yaml")).unwrap();
    assert!(fleet.contains("domain: edge-warden"));
    let tiers: Vec<(String, u64)> = rl["descriptors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["key"] == "tier")
        .map(|d| {
            (
                d["value"].as_str().unwrap().to_string(),
                d["descriptors"][0]["rate_limit"]["requests_per_unit"]
                    .as_u64()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            ("auth".into(), 5),
            ("sensitive".into(), 10),
            ("standard".into(), 30),
            ("general".into(), 60)
        ]
    );
    for tier in ["auth", "sensitive", "standard", "general"] {
        assert!(
            fleet.contains(&format!("descriptor_value: {tier}")),
            "envoy-fleet.yaml lacks tier {tier}"
        );
    }
}

#[test]
fn the_istio_wasmplugin_carries_a_configuration_the_filter_accepts() {
    let docs = yaml_docs(&repo().join("envoy/istio/wasmplugin.yaml"));
    let plugin = docs
        .iter()
        .find(|d| d["kind"] == "WasmPlugin")
        .expect("WasmPlugin");
    assert_eq!(plugin["spec"]["phase"], "AUTHN");
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
    assert!(plugin["spec"]["url"]
        .as_str()
        .unwrap()
        .starts_with("oci://"));
    let env: Vec<&str> = plugin["spec"]["vmConfig"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"HMAC_SHARED_SECRET"));
    let json = serde_json::to_vec(&plugin["spec"]["pluginConfig"]).unwrap();
    let lookup = |name: &str| (name == "HMAC_SHARED_SECRET").then(|| SECRET.to_string());
    let config = edge_warden::config::Config::from_json(&json, &lookup)
        .unwrap_or_else(|e| panic!("Istio pluginConfig: {e}"));
    assert_eq!(config.policies.len(), 3);
    assert!(docs.iter().any(|d| d["kind"] == "Secret"));
    let dockerfile = std::fs::read_to_string(repo().join("envoy/istio/Dockerfile")).unwrap();
    assert!(dockerfile.contains("FROM scratch") && dockerfile.contains("edge_warden.wasm"));
    // Sidecars name the state service by Istio's outbound cluster, and the filter accepts it.
    let remote = config
        .remote
        .expect("the WasmPlugin shares state fleet-wide");
    assert_eq!(remote.cluster, ISTIO_STATE_CLUSTER);
}

/// The Istio outbound cluster of envoy/istio/state-service.yaml's Service, as sidecars see it.
const ISTIO_STATE_CLUSTER: &str = "outbound|50051||edge-warden-state.edge-warden.svc.cluster.local";

#[test]
fn the_istio_state_service_is_the_cluster_the_sidecars_are_told_to_call() {
    let docs = yaml_docs(&repo().join("envoy/istio/state-service.yaml"));
    let kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in state-service.yaml"))
    };
    let deployment = kind("Deployment");
    let service = kind("Service");
    let pdb = kind("PodDisruptionBudget");

    // Two replicas at least, spared by node drains one at a time.
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for selector in [
        &deployment["spec"]["selector"]["matchLabels"],
        &service["spec"]["selector"],
        &pdb["spec"]["selector"]["matchLabels"],
    ] {
        for (key, value) in selector.as_object().unwrap() {
            assert_eq!(
                &labels[key], value,
                "selector {key} does not match the pods"
            );
        }
    }

    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(
        container["image"],
        "registry.example.com/platform/edge-warden-state:0.1.0"
    );
    let env = container["env"].as_array().unwrap();
    let redis = env
        .iter()
        .find(|e| e["name"] == "EDGE_WARDEN_STATE_REDIS")
        .expect("EDGE_WARDEN_STATE_REDIS");
    assert_eq!(redis["value"], "redis://redis.edge-warden.svc:6379");
    // Kubernetes' native gRPC probes, on the port the service listens on.
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["grpc"]["port"], 50051, "{probe}");
    }
    assert_eq!(container["ports"][0]["containerPort"], 50051);
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "resources.{bound}.{resource}"
            );
        }
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );

    // The Service is gRPC to Istio, and exactly the outbound cluster the filter is given.
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["name"], "grpc");
    assert_eq!(port["appProtocol"], "grpc");
    let (direction, rest) = ISTIO_STATE_CLUSTER.split_once('|').unwrap();
    let parts: Vec<&str> = rest.splitn(3, '|').collect();
    assert_eq!(direction, "outbound");
    assert_eq!(port["port"].as_u64().unwrap().to_string(), parts[0]);
    assert_eq!(parts[1], "", "no subset");
    assert_eq!(
        parts[2],
        format!(
            "{}.{}.svc.cluster.local",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap()
        )
    );
    let readme = std::fs::read_to_string(repo().join("envoy/istio/README.md")).unwrap();
    assert!(readme.contains(ISTIO_STATE_CLUSTER));
}
