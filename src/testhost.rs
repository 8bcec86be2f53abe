//! Self-made test hosts: two network namespaces joined by a veth pair, with
//! addresses from the documentation ranges 198.18.0.0/15 and 2001:db8::/32.
//! Used by `tcpscope demo` and by the integration tests. Dropping a
//! [`TestHosts`] deletes both namespaces, which also removes the veth pair.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// Interface names inside the namespaces (each namespace has its own).
pub const CLIENT_IF: &str = "tsc-client";
pub const SERVER_IF: &str = "tsc-server";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2: scripts/setup.sh)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Netlink attributes of a link that iproute2 6.1 cannot set.
pub const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
pub const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;

/// Sets one u32 attribute of link `ifname` in namespace `ns` with an
/// RTM_NEWLINK request (what `ip link set` does), failing with the kernel's
/// answer.
pub fn set_link_u32(ns: &str, ifname: &str, attr: u16, value: u32) -> Result<()> {
    let ifname = std::ffi::CString::new(ifname)?;
    TestHosts::run_in(ns, move || -> Result<()> {
        // SAFETY: plain libc calls on a socket this function owns.
        unsafe {
            let index = libc::if_nametoindex(ifname.as_ptr());
            if index == 0 {
                bail!("no link {ifname:?}");
            }
            let mut msg = Vec::with_capacity(40);
            msg.extend_from_slice(&40u32.to_ne_bytes());
            msg.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
            msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
            msg.extend_from_slice(&[0; 8]); // seq, port id
            msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // ifinfomsg: family, pad, type
            msg.extend_from_slice(&(index as i32).to_ne_bytes());
            msg.extend_from_slice(&[0; 8]); // flags, change
            msg.extend_from_slice(&8u16.to_ne_bytes());
            msg.extend_from_slice(&attr.to_ne_bytes());
            msg.extend_from_slice(&value.to_ne_bytes());
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
            if fd < 0 {
                bail!("netlink socket: {}", std::io::Error::last_os_error());
            }
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            if libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) < 0 {
                bail!("netlink send: {}", std::io::Error::last_os_error());
            }
            let mut ack = [0u8; 1024];
            let n = libc::recv(fd.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0);
            if n < 20 {
                bail!("netlink answer: {}", std::io::Error::last_os_error());
            }
            // nlmsgerr after the 16-byte header: 0 or a negative errno.
            let err = i32::from_ne_bytes(ack[16..20].try_into().unwrap());
            if err != 0 {
                bail!("setting link attribute {attr}: {}", std::io::Error::from_raw_os_error(-err));
            }
            Ok(())
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netlink thread panicked"))??
}

/// Keeps the calling thread on `cpu` (if given).
pub fn pin_to(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET bounds-checks cpu.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        anyhow::bail!("running on CPU {cpu}: {} (see `nproc`)", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A client and a server namespace, joined by a veth pair.
#[derive(Debug)]
pub struct TestHosts {
    pub client_ns: String,
    pub server_ns: String,
}

impl TestHosts {
    /// Creates the pair. `tag` keeps names apart between concurrent users.
    pub fn new(tag: &str) -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let base = format!("tsc-{tag}-{}-{id}", std::process::id());
        let hosts = TestHosts { client_ns: format!("{base}-c"), server_ns: format!("{base}-s") };
        // From here on, Drop cleans up whatever part was made.
        ip(&["netns", "add", &hosts.client_ns])?;
        ip(&["netns", "add", &hosts.server_ns])?;
        for ns in [&hosts.client_ns, &hosts.server_ns] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        hosts.link()?;
        Ok(hosts)
    }

    /// Makes the veth pair between the hosts, addressed and up: at start,
    /// and again after a test deleted it.
    pub fn link(&self) -> Result<()> {
        ip(&[
            "link",
            "add",
            CLIENT_IF,
            "netns",
            &self.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            &self.server_ns,
        ])?;
        for (ns, ifname, v4, v6) in [
            (&self.client_ns, CLIENT_IF, CLIENT_V4, CLIENT_V6),
            (&self.server_ns, SERVER_IF, SERVER_V4, SERVER_V6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname])?;
            ip(&["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    /// Segmentation and receive offloads (TSO, GSO, GRO) off on both ends:
    /// segments cross the link, and reach the hooks, as a NIC would see
    /// them, not as 64 KiB super-packets.
    pub fn offloads_off(&self) -> Result<()> {
        for (ns, ifname) in [(&self.client_ns, CLIENT_IF), (&self.server_ns, SERVER_IF)] {
            let st = Self::command_in(ns, "ethtool")
                .args(["-K", ifname, "tso", "off", "gso", "off", "gro", "off"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .context("running ethtool (scripts/setup.sh installs it)")?;
            anyhow::ensure!(st.success(), "ethtool -K {ifname} failed");
        }
        Ok(())
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command_in(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Runs `f` on a new thread that has entered namespace `ns`; sockets it
    /// opens live there. Network namespaces are per thread.
    pub fn run_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
    }

    pub fn server_addr(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(SERVER_V6)
        } else {
            IpAddr::V4(SERVER_V4)
        }
    }

    pub fn client_addr(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(CLIENT_V6)
        } else {
            IpAddr::V4(CLIENT_V4)
        }
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            // Deleting a namespace kills nothing: callers stop their own
            // processes first. Errors here (already gone) are not news.
            let _ = ip(&["netns", "del", ns]);
            // A guard's rules outlive it, pinned under its name
            // (`<iface>@<netns>`): with the namespace gone, nothing will
            // take them over.
            if let Ok(dirs) = std::fs::read_dir(crate::policy::PIN_ROOT) {
                for d in dirs.flatten() {
                    if d.file_name().to_string_lossy().ends_with(&format!("@{ns}")) {
                        let _ = std::fs::remove_dir_all(d.path());
                    }
                }
            }
            let _ = std::fs::remove_file(format!(
                "{}/{}@{ns}.file-rules.toml",
                crate::policy::RUN_ROOT,
                SERVER_IF
            ));
        }
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped, unless
/// it already ended. Keeps test hosts from outliving a failed test.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: std::process::Child,
    /// Drains a piped stdout while the child runs: a child that prints more
    /// than a pipe holds (64 KiB) would otherwise block on write and never
    /// see the signal that should stop it.
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl ChildGuard {
    /// Spawns `cmd` with stderr piped; returns once a stderr line contains
    /// `ready` (forwarding stderr to ours), or fails if the child exits or
    /// `timeout` passes. Later stderr lines keep being forwarded and kept.
    pub fn spawn_until_ready(
        mut cmd: Command,
        ready: &str,
        timeout: std::time::Duration,
    ) -> Result<(Self, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
        use std::io::BufRead;
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let stdout = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = std::io::Read::read_to_end(&mut out, &mut buf);
                buf
            })
        });
        let guard = ChildGuard { child, stdout };
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let ready = ready.to_string();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  | {line}");
                let is_ready = line.contains(&ready);
                kept.lock().map(|mut v| v.push(line)).ok();
                if is_ready {
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(()) => Ok((guard, lines)),
            Err(_) => {
                let got = lines.lock().map(|v| v.join("\n")).unwrap_or_default();
                bail!("{cmd:?} did not become ready within {timeout:?}; stderr:\n{got}")
            }
        }
    }

    /// All of a piped stdout, once the child has closed it (normally by
    /// exiting). Panics if stdout was not piped or was already taken.
    pub fn stdout_text(&mut self) -> String {
        String::from_utf8(self.stdout_text_bytes()).expect("stdout is UTF-8")
    }

    /// As `stdout_text`, the bytes as they are.
    pub fn stdout_text_bytes(&mut self) -> Vec<u8> {
        self.stdout.take().expect("stdout piped").join().expect("stdout reader")
    }

    /// Sends SIGINT (a user's Ctrl-C) and waits for the exit status.
    pub fn interrupt_and_wait(&mut self, timeout: std::time::Duration) -> Result<std::process::ExitStatus> {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait_timeout(timeout)
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_timeout(&mut self, timeout: std::time::Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if std::time::Instant::now() > deadline {
                bail!("process {} did not exit within {timeout:?}", self.child.id());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
