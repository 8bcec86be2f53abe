//! The kernel's run-time statistics of BPF programs (run count, total run
//! time), which it keeps only while someone holds a BPF_ENABLE_STATS file
//! descriptor (or kernel.bpf_stats_enabled is set). The agent holds one
//! only when asked to: timing every run costs a few ns per run.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::Skel;

/// Statistics on, while this lives.
pub struct RunStats(#[allow(dead_code)] OwnedFd);

impl RunStats {
    pub fn enable() -> Result<Self> {
        // SAFETY: a plain syscall wrapper; a file descriptor or -errno.
        let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
        if fd < 0 {
            let e = std::io::Error::from_raw_os_error(-fd);
            if -fd == libc::EPERM {
                bail!("the kernel keeps BPF run-time statistics only for CAP_SYS_ADMIN ({e}): grant it, or leave bpf_stats off");
            }
            bail!("the kernel refused BPF_ENABLE_STATS ({e}): it needs Linux 5.8 or later");
        }
        // SAFETY: a new descriptor that we own.
        Ok(RunStats(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// (program name, total run time in ns, runs) of each program of `skel`
/// that is loaded.
pub fn of_skel<'a>(skel: &impl Skel<'a>) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for p in skel.object().progs() {
        use libbpf_rs::AsRawLibbpf;
        // SAFETY: a valid program of a loaded object; -1 if not loaded.
        let fd = unsafe { libbpf_sys::bpf_program__fd(p.as_libbpf_object().as_ptr()) };
        if fd < 0 {
            continue; // not loaded (a view this kernel cannot have)
        }
        let mut info = libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of_val(&info) as u32;
        // SAFETY: info is a valid bpf_prog_info of `len` bytes.
        let r = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
        if r == 0 {
            out.push((p.name().to_string_lossy().into_owned(), info.run_time_ns, info.run_cnt));
        }
    }
    out
}
