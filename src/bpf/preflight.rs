//! Checks made before touching the kernel, and translation of kernel errors
//! into one-line messages that name the fix.

use std::ffi::CStr;
use std::path::Path;

use anyhow::{anyhow, Result};

/// Default location of the running kernel's BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

// Capability numbers from <linux/capability.h>.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_NICE: u32 = 23;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The fix for missing privileges, shared by every message that needs it.
pub const PRIVILEGE_FIX: &str =
    "run as root (sudo) or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (setcap cap_bpf,cap_net_admin,cap_perfmon+ep tcpscope)";

/// This process's effective capability set, as a bit mask.
fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether this process has capability `cap` in its effective set.
pub fn has_capability(cap: u32) -> bool {
    effective_capabilities() & (1u64 << cap) != 0
}

/// Fails unless the effective capabilities allow loading and attaching.
pub fn check_privileges() -> Result<()> {
    let eff = effective_capabilities();
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let bpf_ok = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    let perfmon_ok = has(CAP_PERFMON) || has(CAP_SYS_ADMIN);
    if bpf_ok && perfmon_ok && has(CAP_NET_ADMIN) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !bpf_ok {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !perfmon_ok {
        missing.push("CAP_PERFMON");
    }
    Err(anyhow!("missing privileges ({}): {PRIVILEGE_FIX}", missing.join(", ")))
}

/// Fails unless kernel BTF (or the BTF file given) is readable: CO-RE needs it.
pub fn check_btf(custom: Option<&Path>) -> Result<()> {
    let path = custom.unwrap_or_else(|| Path::new(KERNEL_BTF));
    match std::fs::metadata(path) {
        // A file given by hand must be BTF: libbpf would fail on anything
        // else with a bare errno ("Unknown error 4001").
        Ok(m) if m.len() > 0 && custom.is_some() => match libbpf_rs::btf::Btf::from_path(path) {
            Ok(_) => Ok(()),
            Err(_) => Err(anyhow!(
                "{} is not a BTF file: pass --btf with this kernel's BTF (/sys/kernel/btf/vmlinux, or one from BTFHub)",
                path.display()
            )),
        },
        Ok(m) if m.len() > 0 => Ok(()),
        _ if custom.is_some() => Err(anyhow!(
            "BTF file {} not found: pass --btf with an existing BTF file for this kernel (e.g. from BTFHub)",
            path.display()
        )),
        _ => Err(anyhow!(
            "kernel BTF not found at {KERNEL_BTF}: use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or pass --btf FILE"
        )),
    }
}

/// Turns a libbpf error from `doing` into one line with the likely fix.
pub fn explain(e: libbpf_rs::Error, doing: &str) -> anyhow::Error {
    match e.kind() {
        // EPERM (privileges) and EACCES (verifier) look alike here; our own
        // capability check tells them apart.
        libbpf_rs::ErrorKind::PermissionDenied if check_privileges().is_err() => {
            anyhow!("{doing}: permission denied: {PRIVILEGE_FIX}")
        }
        libbpf_rs::ErrorKind::PermissionDenied => anyhow!(
            "{doing}: the kernel verifier rejected the program (a bug in tcpscope: please report it with the output of TCPSCOPE_DEBUG=1)"
        ),
        _ => anyhow!("{doing}: {e}"),
    }
}

/// Mounts a kernel pseudo file system at `path` unless one of that kind
/// (`magic`, as statfs reports it) is already there. True if it mounted.
pub fn ensure_mounted(path: &CStr, fstype: &CStr, magic: i64, opts: &CStr) -> Result<bool> {
    // SAFETY: statfs into a zeroed struct; path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == magic {
        return Ok(false);
    }
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(fstype.as_ptr(), path.as_ptr(), fstype.as_ptr(), 0, opts.as_ptr().cast()) } != 0 {
        let (path, fstype) = (path.to_string_lossy(), fstype.to_string_lossy());
        return Err(anyhow!(
            "mounting {fstype} at {path}: {} (mount it: `mount -t {fstype} {fstype} {path}`)",
            std::io::Error::last_os_error()
        ));
    }
    Ok(true)
}
