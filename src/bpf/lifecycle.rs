//! Loading and attaching the lifecycle tracepoint programs, one by one: a
//! tracepoint this kernel lacks costs its view only, and the user is told
//! which and why.

use std::collections::HashMap;
use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::Link;

use crate::bpf::preflight;

#[allow(clippy::all, non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code)]
mod lifecycle_skel {
    include!(concat!(env!("OUT_DIR"), "/lifecycle.skel.rs"));
}

pub use lifecycle_skel::types;
pub use lifecycle_skel::{LifecycleSkel, LifecycleSkelBuilder};

// SAFETY: #[repr(C)] structs of integers and arrays of integers generated
// from BTF, with explicit padding; every bit pattern is valid.
unsafe impl plain::Plain for types::conn_event {}
// SAFETY: as above.
unsafe impl plain::Plain for types::latency_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::latency_hist {}

/// A view behind one tracepoint, and the programs that can serve it.
pub struct TracepointView {
    pub view: &'static str,
    pub tracepoint: &'static str,
    /// (program, arguments of the tracepoint it reads), newest argument
    /// list first.
    pub programs: &'static [(&'static str, usize)],
}

/// Every view behind a tracepoint (the accept view is attached on its own:
/// see `attach_accept`): the one place in Rust that names a tracepoint.
/// A tracepoint's arguments change between kernels (kfree_skb gained
/// `rx_sk` in 6.11, tcp_send_reset its `reason` in 6.10), and a `tp_btf`
/// program that reads an argument the kernel does not pass is refused at
/// load, with every other program of the object. So each tracepoint is
/// looked up in the kernel's BTF first, and of a view's programs the first
/// whose arguments the kernel passes is loaded; the others, and the views
/// not asked for, are not loaded at all.
pub const TRACEPOINT_VIEWS: [TracepointView; 9] = [
    TracepointView {
        view: "handshake start (first SYN)",
        tracepoint: "consume_skb",
        programs: &[("lc_consume_skb", 2)],
    },
    TracepointView {
        view: "lifecycle (connect, established, close)",
        tracepoint: "inet_sock_set_state",
        programs: &[("lc_inet_sock_set_state", 3)],
    },
    TracepointView {
        view: "retransmits",
        tracepoint: "tcp_retransmit_skb",
        programs: &[("lc_tcp_retransmit_skb", 3)],
    },
    TracepointView {
        view: "SYN-ACK retransmits",
        tracepoint: "tcp_retransmit_synack",
        programs: &[("lc_tcp_retransmit_synack", 2)],
    },
    TracepointView {
        view: "resets received",
        tracepoint: "tcp_receive_reset",
        programs: &[("lc_tcp_receive_reset", 1)],
    },
    TracepointView {
        view: "resets sent",
        tracepoint: "tcp_send_reset",
        programs: &[("lc_tcp_send_reset", 3), ("lc_tcp_send_reset_v1", 2)],
    },
    TracepointView {
        view: "drops with reason",
        tracepoint: "kfree_skb",
        programs: &[("lc_kfree_skb", 4), ("lc_kfree_skb_v1", 3)],
    },
    TracepointView { view: "RTT and zero window", tracepoint: "tcp_probe", programs: &[("lc_tcp_probe", 2)] },
    TracepointView {
        view: "receive queue full",
        tracepoint: "sock_rcvqueue_full",
        programs: &[("lc_sock_rcvqueue_full", 2)],
    },
];

/// The view a program serves, if it is a tracepoint program.
fn view_of(program: &str) -> Option<&'static TracepointView> {
    TRACEPOINT_VIEWS.iter().find(|v| v.programs.iter().any(|(p, _)| *p == program))
}

/// How many arguments tracepoint `tp` passes to `tp_btf` programs on this
/// kernel (its `btf_trace_<tp>` prototype, less the context), or None if
/// the kernel has no such tracepoint.
///
/// Test-only switches, to try the fallbacks on a kernel that needs none:
/// TCPSCOPE_TEST_HIDE_TRACEPOINTS=tp,tp hides tracepoints;
/// TCPSCOPE_TEST_TRACEPOINT_ARGS=tp:n,tp:n pretends they pass n arguments.
fn tracepoint_args(btf: Option<&libbpf_rs::btf::Btf<'_>>, tp: &str) -> Option<usize> {
    let listed = |var: &str| std::env::var(var).unwrap_or_default();
    if listed("TCPSCOPE_TEST_HIDE_TRACEPOINTS").split(',').any(|t| t == tp) {
        return None;
    }
    if let Some(n) = listed("TCPSCOPE_TEST_TRACEPOINT_ARGS")
        .split(',')
        .find_map(|e| e.strip_prefix(tp)?.strip_prefix(':')?.parse().ok())
    {
        return Some(n);
    }
    // No BTF to read (it was checked before): trust the newest layout.
    let Some(btf) = btf else { return Some(usize::MAX) };
    let t: libbpf_rs::btf::BtfType<'_> = btf.type_by_name(&format!("btf_trace_{tp}"))?;
    let proto = t.next_type()?.next_type()?; // typedef -> pointer -> prototype
    let proto = libbpf_rs::btf::types::FuncProto::try_from(proto).ok()?;
    Some(proto.len().saturating_sub(1))
}

/// A lifecycle configuration that follows only connections with one of
/// `ports` as local or remote port (none: all).
pub fn config_for_ports(ports: &[u16]) -> Result<types::lifecycle_config> {
    let mut cfg = types::lifecycle_config::default();
    crate::ensure_usage!(
        ports.len() <= cfg.ports.len(),
        "--port: at most {} ports, {} given",
        cfg.ports.len(),
        ports.len()
    );
    cfg.ports[..ports.len()].copy_from_slice(ports);
    cfg.n_ports = ports.len() as u8;
    Ok(cfg)
}

/// Where `conns` learns which process accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcceptVia {
    /// cgroup getpeername hooks: they run when a process asks for the peer's address, as accept()
    /// with an address buffer (most servers) and getpeername() do; other syscalls pay nothing.
    /// Falls back to `syscall` where cgroup v2 is not mounted.
    Cgroup,
    /// The accept syscalls' exit tracepoints: every accept(), but while they are attached every
    /// syscall of every process takes the kernel's slower tracing path.
    Syscall,
}

/// The loaded programs and the links that keep them attached.
pub struct Lifecycle {
    pub skel: LifecycleSkel<'static>,
    pub links: Vec<Link>,
    /// Views the kernel refused, with the reason.
    pub unavailable: Vec<(String, String)>,
    /// Where the process of accepted sockets comes from, if anywhere.
    pub accept_via: Option<AcceptVia>,
}

/// The tracepoints `latency` needs: handshake start, lifecycle, RTT.
pub const LATENCY_TRACEPOINTS: &[&str] = &["consume_skb", "inet_sock_set_state", "tcp_probe"];
/// The tracepoint the guard's connection limit and handshake count need.
pub const GUARD_TRACEPOINTS: &[&str] = &["inet_sock_set_state"];

/// Loads the lifecycle programs and attaches those behind `tracepoints`
/// (None: every view) that this kernel accepts; the accept view (the
/// process of accepted sockets) only if asked for. Each tracepoint left
/// out is a cost a command that does not need it does not pay: tcp_probe
/// runs for every segment received on the host.
pub fn start(
    config: types::lifecycle_config,
    tracepoints: Option<&[&str]>,
    accept: Option<AcceptVia>,
    peer_conns: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Lifecycle> {
    preflight::check_privileges()?;
    preflight::check_btf(None)?;
    let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = lifecycle_skel::LifecycleSkelBuilder::default()
        .open(storage)
        .map_err(|e| preflight::explain(e, "opening the lifecycle BPF object"))?;
    open.maps.rodata_data.as_deref_mut().context("lifecycle object has no read-only data")?.cfg = config;
    if config.events != 0 {
        // Slots for every CPU the kernel may run a program on.
        let cpus = libbpf_rs::num_possible_cpus().context("counting the possible CPUs")? as u32;
        let slots = types::conn_slots_limits::CONN_SLOTS_PER_CPU.0;
        open.maps.conn_heads.set_max_entries(cpus).context("sizing the event slots")?;
        open.maps.conn_slots.set_max_entries(cpus * slots).context("sizing the event slots")?;
    }
    if let Some(fd) = peer_conns {
        // The guard's ingress programs read the counts these programs keep.
        open.maps.peer_conns.reuse_fd(fd).context("sharing the connection counts with the guard")?;
    }
    // Which program serves each wanted view on this kernel, if any.
    let btf = libbpf_rs::btf::Btf::from_vmlinux().ok();
    let mut chosen: Vec<&str> = Vec::new();
    let mut unavailable = Vec::new();
    for v in &TRACEPOINT_VIEWS {
        let tp = v.tracepoint;
        if tracepoints.is_some_and(|wanted| !wanted.contains(&tp)) {
            continue;
        }
        match tracepoint_args(btf.as_ref(), tp) {
            None => unavailable.push((v.view.to_string(), format!("this kernel has no tracepoint {tp}"))),
            Some(n) => match v.programs.iter().find(|(_, reads)| *reads <= n) {
                Some((prog, _)) => chosen.push(prog),
                None => unavailable.push((
                    v.view.to_string(),
                    format!("this kernel's tracepoint {tp} passes {n} arguments, fewer than tcpscope reads"),
                )),
            },
        }
    }
    for mut prog in open.open_object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        if view_of(&name).is_some() && !chosen.contains(&name.as_str()) {
            prog.set_autoload(false);
        }
    }
    let mut skel = open.load().map_err(|e| preflight::explain(e, "loading the lifecycle programs"))?;
    let mut links = Vec::new();
    {
        use libbpf_rs::skel::Skel as _;
        for prog in skel.object_mut().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            let Some(v) = view_of(&name) else { continue };
            if !chosen.contains(&name.as_str()) {
                continue;
            }
            match prog.attach() {
                Ok(l) => links.push(l),
                Err(e) => unavailable
                    .push((v.view.to_string(), format!("tracepoint {} refused: {e}", v.tracepoint))),
            }
        }
    }
    let mut accept_via = None;
    if let Some(via) = accept {
        match attach_accept(&skel, via, &mut unavailable) {
            Ok((mut l, via)) => {
                links.append(&mut l);
                accept_via = Some(via);
            }
            Err(why) => unavailable.push(("process of accepted sockets".to_string(), why)),
        }
    }
    if links.is_empty() {
        anyhow::bail!(
            "no lifecycle tracepoint could be attached (is this kernel built with BTF tracepoints?)"
        );
    }
    Ok(Lifecycle { skel, links, unavailable, accept_via })
}

/// The root of the cgroup v2 hierarchy as this process sees it, from
/// /proc/self/mountinfo (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid systems). Programs attached there run for every cgroup below.
fn cgroup2_root() -> Result<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // "36 25 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw"
    info.lines()
        .filter_map(|l| l.split_once(" - "))
        .filter(|(_, fs)| fs.split(' ').next() == Some("cgroup2"))
        .map(|(mount, _)| mount.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(3) == Some(&"/") && f.get(4).is_some_and(|p| !p.contains('\\')))
        .map(|f| f[4].into())
        .context("no cgroup v2 hierarchy is mounted (mount it: `mount -t cgroup2 none /sys/fs/cgroup`)")
}

/// Attaches `progs` at the root cgroup, where they run for every process.
fn attach_root_cgroup<const N: usize>(progs: [&libbpf_rs::ProgramMut<'_>; N]) -> Result<Vec<Link>> {
    let root = cgroup2_root()?;
    let dir = std::fs::File::open(&root).with_context(|| format!("opening {}", root.display()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    progs.into_iter().map(|p| Ok(p.attach_cgroup(fd)?)).collect()
}

/// Attaches the empty programs of bpf/baseline.bpf.c (loaded with
/// `load_baseline(true)`) at every hook `start` attaches for `conns` by
/// default: what the kernel's calls into programs there cost, before any
/// program does anything (`bench conns`' floor).
pub fn attach_empty_programs(skel: &mut crate::bpf::BaselineSkel<'static>) -> Result<Vec<Link>> {
    use libbpf_rs::skel::Skel as _;
    // Every tp_btf program of the baseline object: its list of conns'
    // tracepoints is bpf/baseline.bpf.c's, checked against ours below.
    let mut links = Vec::new();
    for prog in skel.object_mut().progs_mut() {
        let Some(tp) = prog.section().to_str().and_then(|s| s.strip_prefix("tp_btf/")) else { continue };
        anyhow::ensure!(
            TRACEPOINT_VIEWS.iter().any(|v| v.tracepoint == tp),
            "baseline.bpf.c has an empty program at {tp}, which conns does not use"
        );
        links.push(prog.attach().with_context(|| format!("attaching {}", prog.name().to_string_lossy()))?);
    }
    anyhow::ensure!(
        links.len() == TRACEPOINT_VIEWS.len(),
        "baseline.bpf.c lacks an empty program at some tracepoint of conns"
    );
    let p = &skel.progs;
    links.extend(attach_root_cgroup([&p.baseline_getpeername4, &p.baseline_getpeername6])?);
    Ok(links)
}

/// The accept view, by `via`; if the cgroup hooks cannot be attached, the
/// syscall tracepoints instead, and why goes to `unavailable`. Returns the
/// links and what was attached.
fn attach_accept(
    skel: &LifecycleSkel<'static>,
    via: AcceptVia,
    unavailable: &mut Vec<(String, String)>,
) -> std::result::Result<(Vec<Link>, AcceptVia), String> {
    let cgroup = || attach_root_cgroup([&skel.progs.lc_getpeername4, &skel.progs.lc_getpeername6]);
    let mut cgroup_failed = String::new();
    if via == AcceptVia::Cgroup {
        match cgroup() {
            Ok(links) => return Ok((links, AcceptVia::Cgroup)),
            Err(e) => cgroup_failed = format!("{e:#}"),
        }
    }
    let links = attach_accept_syscalls(skel).map_err(|e| {
        if cgroup_failed.is_empty() {
            e
        } else {
            format!("cgroup getpeername hooks refused ({cgroup_failed}); {e}")
        }
    })?;
    if !cgroup_failed.is_empty() {
        unavailable.push((
            "cgroup getpeername hooks (the accept syscall tracepoints serve instead)".to_string(),
            cgroup_failed,
        ));
    }
    Ok((links, AcceptVia::Syscall))
}

/// The per-syscall tracepoints syscalls:sys_exit_accept{,4} fire on accept
/// only; the fallback, tp_btf/sys_exit, runs on every syscall of every
/// process. Either way, while one is attached every syscall takes the
/// kernel's slow tracing path. The former need tracefs, mounted here if
/// absent.
fn attach_accept_syscalls(skel: &LifecycleSkel<'static>) -> std::result::Result<Vec<Link>, String> {
    let per_syscall = || -> Result<Vec<Link>> {
        let _ = preflight::ensure_mounted(c"/sys/kernel/tracing", c"tracefs", 0x74726163, c"")?;
        Ok(vec![
            skel.progs
                .lc_sys_exit_accept4
                .attach_tracepoint(libbpf_rs::TracepointCategory::Syscalls, "sys_exit_accept4")?,
            skel.progs
                .lc_sys_exit_accept
                .attach_tracepoint(libbpf_rs::TracepointCategory::Syscalls, "sys_exit_accept")?,
        ])
    };
    let first = match per_syscall() {
        Ok(links) => return Ok(links),
        Err(e) => e,
    };
    match skel.progs.lc_sys_exit.attach() {
        Ok(l) => Ok(vec![l]),
        Err(e) => Err(format!(
            "tracepoints syscalls:sys_exit_accept{{,4}} refused ({first:#}), and raw sys_exit too: {e}"
        )),
    }
}

/// Names of kernel enums' values, read from the running kernel's BTF
/// (never a hard-coded table: drop reasons change between kernels), one map
/// per (enum, prefix to strip, e.g. "SKB_DROP_REASON_"). Parses vmlinux BTF
/// once: that takes tens of milliseconds.
pub fn kernel_enum_names<const N: usize>(enums: [(&str, &str); N]) -> [HashMap<u32, String>; N] {
    let btf = libbpf_rs::btf::Btf::from_vmlinux().ok();
    enums.map(|(enum_name, strip)| {
        let mut names = HashMap::new();
        let e = btf.as_ref().and_then(|b| b.type_by_name::<libbpf_rs::btf::types::Enum<'_>>(enum_name));
        for m in e.iter().flat_map(|e| e.iter()) {
            if let Some(n) = m.name {
                let n = n.to_string_lossy();
                names.insert(m.value as u32, n.strip_prefix(strip).unwrap_or(&n).to_string());
            }
        }
        names
    })
}
