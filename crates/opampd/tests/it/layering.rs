//! The crate boundaries of ARCHITECTURE.md, checked on the resolved dependency graph
//! (`cargo metadata`), so a dependency that breaks a layer fails the build's tests instead of
//! waiting for a reviewer to notice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The workspace's dependency graph: package name -> (dependency name, is a normal dependency).
struct Graph {
    deps: BTreeMap<String, Vec<(String, bool)>>,
}

impl Graph {
    fn load() -> Self {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked", "--offline", "--manifest-path"])
            .arg(&manifest)
            .output()
            .expect("cargo metadata runs");
        assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is json");
        let names: BTreeMap<&str, &str> = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let mut deps = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve graph") {
            let name = names[node["id"].as_str().unwrap()].to_owned();
            let edges = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let normal =
                        d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
                    (names[d["pkg"].as_str().unwrap()].to_owned(), normal)
                })
                .collect();
            deps.insert(name, edges);
        }
        Self { deps }
    }

    /// The normal (non-dev, non-build) dependencies of `krate`, direct only.
    fn direct(&self, krate: &str) -> BTreeSet<&str> {
        self.deps[krate].iter().filter(|(_, normal)| *normal).map(|(n, _)| n.as_str()).collect()
    }

    /// Every package `krate` links in a normal build, transitively.
    fn closure(&self, krate: &str) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![krate];
        while let Some(next) = todo.pop() {
            for dep in self.direct(next) {
                if seen.insert(dep) {
                    todo.push(dep);
                }
            }
        }
        seen
    }
}

fn forbidden<'a>(found: &BTreeSet<&'a str>, banned: &[&str]) -> Vec<&'a str> {
    found.iter().copied().filter(|d| banned.contains(d)).collect()
}

/// Runtimes, transports and storage engines: what the pure layers must never link.
const IO: &[&str] =
    &["tokio", "axum", "hyper", "reqwest", "elasticsearch", "redb", "moka", "tungstenite", "mio"];

#[test]
fn wire_types_and_core_link_no_runtime_transport_or_storage() {
    let g = Graph::load();
    for krate in ["opamp-proto", "opamp-core"] {
        let bad = forbidden(&g.closure(krate), IO);
        assert!(bad.is_empty(), "{krate} must stay pure but links {bad:?}");
    }
    let core = g.closure("opamp-core");
    let bad = forbidden(&core, &["opamp-store", "opampd", "opampd-loadtest"]);
    assert!(bad.is_empty(), "opamp-core depends on a higher layer: {bad:?}");
    let bad = forbidden(&g.closure("opamp-proto"), &["opamp-core", "opamp-store", "opampd"]);
    assert!(bad.is_empty(), "opamp-proto depends on a higher layer: {bad:?}");
}

#[test]
fn the_store_knows_no_http_server() {
    let g = Graph::load();
    // the elasticsearch client links hyper as a client; what the store must not use itself is
    // an HTTP server or the server crate
    let bad = forbidden(&g.direct("opamp-store"), &["axum", "hyper", "tower-http", "opampd"]);
    assert!(bad.is_empty(), "opamp-store depends directly on {bad:?}");
    assert!(!g.closure("opamp-store").contains("axum"), "opamp-store links axum");
}

#[test]
fn the_load_generator_is_a_black_box_client() {
    let g = Graph::load();
    let bad = forbidden(&g.closure("opampd-loadtest"), &["opamp-core", "opamp-store", "opampd"]);
    assert!(bad.is_empty(), "the load generator must depend on the wire types only: {bad:?}");
    assert!(g.direct("opampd-loadtest").contains("opamp-proto"));
}

#[test]
fn the_graph_is_read_right() {
    // guards the checks above against passing on an empty or misread graph
    let g = Graph::load();
    assert!(g.closure("opampd").contains("opamp-store"));
    assert!(g.closure("opampd").contains("tokio"));
    assert!(g.closure("opamp-store").contains("elasticsearch"));
    assert!(g.direct("opamp-core").contains("opamp-proto"));
}

#[test]
fn fuzz_support_is_a_dev_dependency_only() {
    let g = Graph::load();
    let linking: Vec<&str> = g
        .deps
        .keys()
        .map(String::as_str)
        .filter(|k| g.direct(k).contains("fuzz-support"))
        .collect();
    assert!(linking.is_empty(), "{linking:?} depend on fuzz-support outside [dev-dependencies]");
    // the edge exists, as a dev-dependency: the check above looks at the right graph
    assert!(g.deps["opamp-core"].iter().any(|(name, normal)| name == "fuzz-support" && !normal));
}
