//! Who owns a socket, from its cgroup: the cgroup v2 id every connection
//! event carries is the inode number of the cgroup's directory, so the
//! directory tree under /sys/fs/cgroup names it. From the path come the
//! systemd unit, or a container's runtime and id (docker, containerd,
//! CRI-O and podman, with the systemd or the cgroupfs driver), and a
//! Kubernetes pod's UID; where the node's /var/log/pods can be read, the
//! pod's namespace and name too.
//!
//! Ids are looked up in a cache; an unknown id makes the tree be walked
//! again, at most once a second, so that a flood of short-lived cgroups
//! cannot make every event walk it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a cgroup path says of its workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// The cgroup's path under the cgroup root, `/` first.
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// docker, containerd, crio or podman.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

impl Workload {
    /// A short name for a metric label: the pod, the container, the unit,
    /// else the cgroup path.
    pub fn label(&self) -> String {
        match (&self.pod_namespace, &self.pod_name, &self.pod_uid, &self.container_id, &self.unit) {
            (Some(ns), Some(name), ..) => format!("pod/{ns}/{name}"),
            (_, _, Some(uid), ..) => format!("pod/{uid}"),
            (_, _, _, Some(id), _) => format!("container/{}", &id[..id.len().min(12)]),
            (_, _, _, _, Some(unit)) => format!("unit/{unit}"),
            _ => format!("cgroup{}", self.cgroup),
        }
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID from a kubepods path component: `kubepods-burstable-pod<uid
/// with underscores>.slice` (systemd driver) or `pod<uid>` (cgroupfs).
fn pod_uid(component: &str) -> Option<String> {
    let rest = component.strip_suffix(".slice").unwrap_or(component);
    let at = rest.rfind("pod")?;
    let uid = rest[at + 3..].replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// What a cgroup path names.
pub fn parse(cgroup: &str) -> Workload {
    let mut w = Workload { cgroup: cgroup.to_string(), ..Default::default() };
    let parts: Vec<&str> = cgroup.split('/').filter(|p| !p.is_empty()).collect();
    let in_kubepods = parts.iter().any(|p| p.starts_with("kubepods"));
    for (i, p) in parts.iter().enumerate() {
        if in_kubepods && w.pod_uid.is_none() {
            w.pod_uid = pod_uid(p);
        }
        let scope = p.strip_suffix(".scope");
        let prefixed = [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "crio"),
            ("libpod-", "podman"),
        ];
        if let Some((id, runtime)) =
            scope.and_then(|s| prefixed.iter().find_map(|(pre, rt)| Some((s.strip_prefix(pre)?, *rt))))
        {
            if is_container_id(id) {
                (w.runtime, w.container_id) = (Some(runtime), Some(id.to_string()));
            }
        } else if is_container_id(p) {
            // cgroupfs driver: /docker/<id>, /kubepods/.../pod<uid>/<id>.
            let runtime = match parts.get(i.wrapping_sub(1)) {
                Some(&"docker") => Some("docker"),
                _ if in_kubepods => None, // any CRI runtime: the id is what counts
                _ => None,
            };
            (w.runtime, w.container_id) = (runtime, Some(p.to_string()));
        } else if (p.ends_with(".service") || p.ends_with(".scope")) && w.container_id.is_none() {
            w.unit = Some(p.to_string());
        }
    }
    if w.container_id.is_some() {
        w.unit = None;
    }
    w
}

/// Where the cgroup v2 hierarchy is mounted (the one whose ids the kernel
/// reports): /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a
/// hybrid one. From /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let target = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(target))
    })
}

pub struct Workloads {
    root: PathBuf,
    pods_dir: PathBuf,
    by_id: HashMap<u64, Workload>,
    pods: HashMap<String, (String, String)>,
    last_walk: Option<Instant>,
}

impl Workloads {
    /// Resolves ids under `root` (normally `cgroup2_root()`), pod names
    /// from `pods_dir` (normally /var/log/pods).
    pub fn new(root: &Path, pods_dir: &Path) -> Self {
        Workloads {
            root: root.to_path_buf(),
            pods_dir: pods_dir.to_path_buf(),
            by_id: HashMap::new(),
            pods: HashMap::new(),
            last_walk: None,
        }
    }

    /// The workload of cgroup `id`, if its cgroup is (or was, within the
    /// last walk) there.
    pub fn get(&mut self, id: u64) -> Option<&Workload> {
        if id != 0
            && !self.by_id.contains_key(&id)
            && self.last_walk.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.walk();
        }
        self.by_id.get(&id)
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        self.pods = read_pods(&self.pods_dir);
        let mut found = HashMap::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let rel = dir.strip_prefix(&self.root).map_or(String::new(), |r| r.display().to_string());
            let mut w = parse(&format!("/{rel}"));
            if let Some((ns, name)) = w.pod_uid.as_ref().and_then(|u| self.pods.get(u)) {
                (w.pod_namespace, w.pod_name) = (Some(ns.clone()), Some(name.clone()));
            }
            found.insert(meta.ino(), w);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                stack.extend(
                    rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
                );
            }
        }
        // Gone cgroups' ids are never reused while the host is up (64-bit
        // inode numbers of cgroupfs): keeping them names late events.
        self.by_id.extend(found);
        if self.by_id.len() > 1 << 16 {
            self.by_id.clear();
        }
    }
}

/// Pod UID → (namespace, name), from `<dir>/<namespace>_<name>_<uid>/`.
fn read_pods(dir: &Path) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut it = name.rsplitn(2, '_');
        let (Some(uid), Some(rest)) = (it.next(), it.next()) else { continue };
        if let Some((ns, pod)) = rest.split_once('_') {
            out.insert(uid.to_string(), (ns.to_string(), pod.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2b8a0c3d1e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    #[test]
    fn each_runtime_and_driver_is_named() {
        let uid = "0b7d5f1e-2c3a-4b6d-8e9f-1a2b3c4d5e6f";
        let under = uid.replace('-', "_");
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), Some("docker"), None),
            (format!("/docker/{ID}"), Some("docker"), None),
            (format!("/system.slice/libpod-{ID}.scope"), Some("podman"), None),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/cri-containerd-{ID}.scope"),
                Some("containerd"),
                Some(uid),
            ),
            (format!("/kubepods.slice/kubepods-pod{under}.slice/crio-{ID}.scope"), Some("crio"), Some(uid)),
            (format!("/kubepods/besteffort/pod{uid}/{ID}"), None, Some(uid)),
        ];
        for (path, runtime, pod) in cases {
            let w = parse(&path);
            assert_eq!(w.container_id.as_deref(), Some(ID), "{path}");
            assert_eq!(w.runtime, runtime, "{path}");
            assert_eq!(w.pod_uid.as_deref(), pod, "{path}");
            assert_eq!(w.unit, None, "{path}");
        }
        let svc = parse("/system.slice/nginx.service");
        assert_eq!(
            (svc.unit.as_deref(), svc.label()),
            (Some("nginx.service"), "unit/nginx.service".to_string())
        );
        let user = parse("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(user.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(parse("/").label(), "cgroup/");
        // Not a container: a scope whose "id" is not 64 hex digits.
        assert_eq!(parse("/system.slice/docker-notanid.scope").container_id, None);
    }
}
