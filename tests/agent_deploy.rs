//! The Kubernetes deployment files, checked offline (there is no cluster
//! here, and `kubectl --dry-run=client` still asks a server for its OpenAPI
//! document): every object of deploy/kubernetes/tcpscope-agent.yaml is
//! validated against the Kubernetes 1.32 JSON schemas (tests/data/kubernetes,
//! strict: a misspelt field fails) by python3-jsonschema; the DaemonSet asks
//! for exactly the capabilities of the systemd unit (the set measured to
//! suffice); its ConfigMap's agent config passes `tcpscope agent --check`;
//! and the Dockerfile's runtime image installs the Debian package of every
//! library the built binary links.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Validates the YAML documents of `file` against the schemas; returns them
/// as JSON, or the validator's complaint.
fn validate(file: &Path) -> Result<Vec<Value>, String> {
    const SCRIPT: &str = r#"
import json, sys, yaml, jsonschema
schemas = {"Namespace": "namespace-v1", "ServiceAccount": "serviceaccount-v1",
           "ConfigMap": "configmap-v1", "DaemonSet": "daemonset-apps-v1"}
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]
for d in docs:
    kind = d.get("kind")
    if kind not in schemas:
        sys.exit(f"no schema for kind {kind!r}")
    schema = json.load(open(f"{sys.argv[2]}/{schemas[kind]}.json"))
    try:
        jsonschema.validate(d, schema)
    except jsonschema.ValidationError as e:
        sys.exit(f"{kind} {d['metadata'].get('name')}: {e.message} at {list(e.absolute_path)}")
print(json.dumps(docs))
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .arg(file)
        .arg(format!("{ROOT}/tests/data/kubernetes"))
        .output()
        .expect("python3 (scripts/setup.sh installs python3-jsonschema and python3-yaml)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn the_kubernetes_manifests_validate_and_ask_for_no_more_than_the_unit() {
    let _load = side_by_side();
    let file = Path::new(ROOT).join("deploy/kubernetes/tcpscope-agent.yaml");
    let docs = validate(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let of = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    let ds = of("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut added: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    added.sort();
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/systemd/tcpscope-agent.service")).unwrap();
    let mut unit_caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    unit_caps.sort();
    assert_eq!(added, unit_caps, "the pod's capabilities are the unit's");
    for key in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(c["resources"][key][what].is_string(), "resources.{key}.{what}");
        }
    }
    let mounts: Vec<&str> =
        c["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    for needed in ["/sys/fs/bpf", "/sys/kernel/btf", "/sys/fs/cgroup", "/run/tcpscope", "/var/lib/tcpscope"] {
        assert!(mounts.contains(&needed), "{needed} mounted: {mounts:?}");
    }
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        (ann["prometheus.io/scrape"].as_str(), ann["prometheus.io/port"].as_str()),
        (Some("true"), Some("9917"))
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");

    // The ConfigMap's config, as the container gets it, passes the agent's
    // own check (its listen address as Kubernetes would expand it).
    let dir = std::env::temp_dir().join(format!("tcpscope-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(&config, of("ConfigMap")["data"]["agent.toml"].as_str().unwrap()).unwrap();
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("$(NODE_IP)", "198.18.0.2")
                .replace("/etc/tcpscope/agent.toml", config.to_str().unwrap())
        })
        .collect();
    let out = Command::new(tcpscope_bin()).args(&args).arg("--check").output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("configuration good"), "{args:?}: {said}");

    // The validator is strict: a misspelt field, or a value of the wrong
    // type, fails.
    let text = std::fs::read_to_string(&file).unwrap();
    for (from, to) in
        [("hostNetwork: true", "hostNetworking: true"), ("containerPort: 9917", "containerPort: \"9917\"")]
    {
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, text.replace(from, to)).unwrap();
        assert!(validate(&bad).is_err(), "{to} passes the validator");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_image_has_every_library_the_binary_links_and_every_file_the_build_reads() {
    let _load = side_by_side();
    let docker = std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/Dockerfile")).unwrap();
    let stages: Vec<&str> = docker.split("\nFROM ").collect();
    let runtime = stages.last().unwrap();
    let installed: Vec<&str> = runtime
        .split("apt-get install")
        .nth(1)
        .expect("the runtime stage installs packages")
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "\\")
        .collect();
    let ldd = Command::new("ldd").arg(tcpscope_bin()).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let Some(path) = line.split("=>").nth(1).and_then(|r| r.split_whitespace().next()) else { continue };
        // dpkg knows each file by one of its names (/lib or /usr/lib, the
        // link or its target, since the /usr merge).
        let real = std::fs::canonicalize(path).unwrap().display().to_string();
        let names = [
            path.to_string(),
            real.clone(),
            real.replacen("/usr/lib/", "/lib/", 1),
            path.replacen("/lib/", "/usr/lib/", 1),
        ];
        let pkg = names
            .iter()
            .find_map(|n| {
                let owner = Command::new("dpkg").arg("-S").arg(n).output().ok()?;
                let p = String::from_utf8_lossy(&owner.stdout).split(':').next()?.trim().to_string();
                (owner.status.success() && !p.is_empty()).then_some(p)
            })
            .unwrap_or_else(|| panic!("no Debian package has {path}"));
        // libc6 and what it depends on are in every Debian image.
        let deps = Command::new("dpkg-query").args(["-W", "-f=${Depends}", "libc6"]).output().unwrap();
        let deps = String::from_utf8_lossy(&deps.stdout).to_string();
        let base =
            pkg == "libc6" || deps.split(',').any(|d| d.split_whitespace().next() == Some(pkg.as_str()));
        assert!(
            base || installed.contains(&pkg.as_str()),
            "{path} ({pkg}) is not installed in the image: {installed:?}"
        );
    }
    // What the build stage copies is enough for cargo to read the
    // workspace, its lock file unchanged.
    let dir = std::env::temp_dir().join(format!("tcpscope-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for line in stages[stages.len() - 2]
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
    {
        // As COPY does: into a directory given as `dir/`, else as the name given.
        let words: Vec<&str> = line.split_whitespace().collect();
        let (dest, sources) = words.split_last().unwrap();
        for src in sources {
            let to = if dest.ends_with('/') { dir.join(dest).join(src) } else { dir.join(dest) };
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            let st = Command::new("cp").arg("-r").arg(format!("{ROOT}/{src}")).arg(&to).status().unwrap();
            assert!(st.success(), "COPY {src}: no such file in the repository");
        }
    }
    let meta = Command::new("cargo")
        .args(["metadata", "--locked", "--offline", "--format-version", "1", "--no-deps"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        meta.status.success(),
        "cargo metadata on the image's sources: {}",
        String::from_utf8_lossy(&meta.stderr)
    );
    let build_rs = std::fs::read_to_string(dir.join("build.rs")).unwrap();
    for src in build_rs.split('"').filter(|s| s.starts_with("bpf/")) {
        assert!(dir.join(src).exists(), "build.rs reads {src}, which the image's sources lack");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
