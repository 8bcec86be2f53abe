//! Attaching the ingress programs through BPF links.
//!
//! A link is a file descriptor: when the process exits, even by `kill -9`,
//! the kernel closes it and detaches the program. Dropping an
//! [`AttachedLink`] detaches at once.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use anyhow::{anyhow, bail, Result};
use libbpf_rs::Program;

use crate::bpf::preflight::PRIVILEGE_FIX;

// From <linux/if_link.h>.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Which ingress hook to attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookKind {
    /// XDP: earliest hook, in the driver, before GRO and before an skb exists.
    Xdp,
    /// TC ingress (tcx): after GRO, on the skb; works on every device.
    Tc,
}

impl HookKind {
    /// The hook's name, as users and metric labels say it.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Xdp => "xdp",
            HookKind::Tc => "tc",
        }
    }
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// In the driver; fails if the driver has no XDP support.
    Native,
    /// Generic (skb) XDP: works everywhere, slower.
    Generic,
}

/// A program attached to an interface; detached on drop.
#[derive(Debug)]
pub struct AttachedLink {
    fd: OwnedFd,
    pub description: String,
}

impl AttachedLink {
    fn info(&self) -> Option<libbpf_rs::libbpf_sys::bpf_link_info> {
        // SAFETY: bpf_link_info is plain old data; zero is a valid value.
        let mut info: libbpf_rs::libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of_val(&info) as u32;
        // SAFETY: fd is a valid link fd; info and len point to valid memory of
        // the size passed.
        let r = unsafe {
            libbpf_rs::libbpf_sys::bpf_link_get_info_by_fd(self.fd.as_raw_fd(), &mut info, &mut len)
        };
        (r == 0).then_some(info)
    }

    pub fn id(&self) -> Option<u32> {
        self.info().map(|i| i.id)
    }

    /// The id of the program this link attached.
    pub fn prog_id(&self) -> Option<u32> {
        self.info().map(|i| i.prog_id)
    }
}

/// Moves this thread into network namespace `name` (from `ip netns`).
pub fn enter_netns(name: &str) -> Result<()> {
    // A name from `ip netns`, or a path to a namespace file (as `ip netns
    // exec` and `nsenter` take: /var/run/netns/x, /proc/PID/ns/net).
    let path = if name.contains('/') { name.to_string() } else { format!("/var/run/netns/{name}") };
    let f = std::fs::File::open(&path)
        .map_err(|e| anyhow!("network namespace '{name}' not found ({path}: {e}): see `ip netns list`"))?;
    // SAFETY: setns on a namespace fd we own; affects this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("entering network namespace '{name}': {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The interface index of `name`, or a clear error.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| anyhow!("bad interface name '{name}'"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface '{name}' not found: check the name with `ip link` (and that you are in its network namespace)");
    }
    Ok(idx)
}

fn link_create(prog: &Program<'_>, ifindex: u32, attach_type: u32, flags: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: zero is a valid value for this plain C options struct.
    let mut opts: libbpf_rs::libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of_val(&opts) as _;
    opts.flags = flags;
    // SAFETY: the program fd is valid for the duration of the call; opts is
    // initialised with its size.
    let fd = unsafe {
        libbpf_rs::libbpf_sys::bpf_link_create(prog.as_fd().as_raw_fd(), ifindex as i32, attach_type, &opts)
    };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: bpf_link_create returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The id of the XDP program already on `ifindex`, if any.
fn existing_xdp_prog(ifindex: u32) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: id points to a valid u32.
    let r = unsafe { libbpf_rs::libbpf_sys::bpf_xdp_query_id(ifindex as i32, 0, &mut id) };
    (r == 0 && id != 0).then_some(id)
}

/// Attaches `prog` as XDP on `ifname`.
pub fn attach_xdp(prog: &Program<'_>, ifname: &str, mode: XdpMode) -> Result<AttachedLink> {
    let idx = ifindex(ifname)?;
    if let Some(id) = existing_xdp_prog(idx) {
        bail!(
            "interface '{ifname}' already has an XDP program (id {id}): stop its owner (see `bpftool net show dev {ifname}`) or use --hook tc"
        );
    }
    let flags = match mode {
        XdpMode::Native => XDP_FLAGS_DRV_MODE,
        XdpMode::Generic => XDP_FLAGS_SKB_MODE,
    };
    let fd = link_create(prog, idx, libbpf_rs::libbpf_sys::BPF_XDP, flags).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if mode == XdpMode::Native => anyhow!(
                "native XDP is not supported on '{ifname}' (its driver has no XDP support): use --xdp-mode generic or --hook tc"
            ),
            Some(libc::EBUSY) | Some(libc::EEXIST) => anyhow!(
                "interface '{ifname}' already has an XDP program: stop its owner (see `bpftool net show dev {ifname}`) or use --hook tc"
            ),
            Some(libc::EPERM) | Some(libc::EACCES) => anyhow!("attaching XDP to '{ifname}': permission denied: {PRIVILEGE_FIX}"),
            _ => anyhow!("attaching XDP to '{ifname}': {e}"),
        }
    })?;
    let mode_name = match mode {
        XdpMode::Native => "native",
        XdpMode::Generic => "generic",
    };
    Ok(AttachedLink { fd, description: format!("xdp ({mode_name}) on {ifname}") })
}

/// Where a tcx link goes in the interface's chain of TC ingress programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcPlace {
    /// After the programs already there (observers: they see what passes).
    Last,
    /// Before every program already there (`BPF_F_BEFORE` with no anchor):
    /// a guard, so that no program attached earlier can pass a packet
    /// before the rules see it.
    First,
}

/// Attaches `prog` to TC ingress of `ifname` through tcx.
pub fn attach_tc(prog: &Program<'_>, ifname: &str, place: TcPlace) -> Result<AttachedLink> {
    let idx = ifindex(ifname)?;
    let flags = match place {
        TcPlace::Last => 0,
        TcPlace::First => libbpf_rs::libbpf_sys::BPF_F_BEFORE,
    };
    let fd = link_create(prog, idx, libbpf_rs::libbpf_sys::BPF_TCX_INGRESS, flags).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => anyhow!("attaching to TC ingress of '{ifname}': permission denied: {PRIVILEGE_FIX}"),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => anyhow!(
                "attaching to TC ingress of '{ifname}': this kernel has no tcx links (needs Linux 6.6+); use --hook xdp"
            ),
            _ => anyhow!("attaching to TC ingress of '{ifname}': {e}"),
        }
    })?;
    Ok(AttachedLink { fd, description: format!("tc ingress (tcx) on {ifname}") })
}

/// The ids of the programs on `ifindex`'s tcx ingress chain, in the order
/// they run.
pub fn tc_chain(ifindex: u32) -> Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut opts = libbpf_rs::libbpf_sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_prog_query_opts>() as _,
        prog_ids: ids.as_mut_ptr(),
        ..Default::default()
    };
    opts.__bindgen_anon_1.count = ids.len() as u32;
    // SAFETY: opts is initialised with its size and points at `ids`, whose
    // length it gives.
    let r = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_query_opts(
            ifindex as i32,
            libbpf_rs::libbpf_sys::BPF_TCX_INGRESS,
            &mut opts,
        )
    };
    if r != 0 {
        bail!("listing the TC ingress programs: {}", std::io::Error::from_raw_os_error(-r));
    }
    // SAFETY: the kernel wrote the count field of the union.
    let n = unsafe { opts.__bindgen_anon_1.count } as usize;
    ids.truncate(n.min(ids.len()));
    Ok(ids)
}

/// Tells when the interface a program is attached to goes away: deleted, or
/// moved, or its named network namespace deleted. A program attached through
/// a link to a deleted interface is detached by the kernel, but the process
/// holding it would keep running (and, being in it, keep a deleted network
/// namespace alive): each command's loop asks [`Presence::gone`] and ends.
#[derive(Debug)]
pub struct Presence {
    ifname: String,
    ifindex: u32,
    /// The `ip netns` name of this thread's network namespace, with the
    /// namespace's identity (device, inode), if it has one.
    netns: Option<(std::path::PathBuf, (u64, u64))>,
}

/// (device, inode) of a namespace file.
fn ns_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Where `ip netns` keeps its names.
const NETNS_DIR: &str = "/var/run/netns";

impl Presence {
    /// For `ifname` (index `ifindex`) as seen from this thread now.
    pub fn new(ifname: &str, ifindex: u32) -> Self {
        let own = ns_identity(std::path::Path::new("/proc/thread-self/ns/net"));
        // Entered with --netns, or started by `ip netns exec`: either way,
        // a name in /var/run/netns points at this namespace.
        let netns = own.and_then(|own| {
            std::fs::read_dir(NETNS_DIR)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| ns_identity(p) == Some(own))
                .map(|p| (p, own))
        });
        Presence { ifname: ifname.to_string(), ifindex, netns }
    }

    /// Why the interface is gone, or None while it is there.
    pub fn gone(&self) -> Option<String> {
        if let Some((path, id)) = &self.netns {
            if ns_identity(path) != Some(*id) {
                return Some(format!(
                    "the network namespace of '{}' ({}) was deleted",
                    self.ifname,
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
        let c = CString::new(self.ifname.as_str()).ok()?;
        // SAFETY: c is a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        (idx != self.ifindex).then(|| format!("interface '{}' went away (deleted or renamed)", self.ifname))
    }
}
