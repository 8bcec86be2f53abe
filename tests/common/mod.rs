//! Shared helpers for the integration tests: the tcpscope binary, tshark as
//! the independent decoder, and a TCP exchange between the test hosts.
#![allow(dead_code)] // each test file uses a different part

pub mod l7gen;
pub mod raw;

/// Tests that load the machine on purpose (a CPU saturated with
/// connections, every CPU busy, a million rules whose maps the kernel frees
/// for seconds after) take `alone()`: what they assert must not depend on
/// the other tests' load, nor theirs on it. Every other test takes
/// `side_by_side()` and runs in parallel with the rest. One lock per test
/// binary.
static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write().unwrap_or_else(|e| e.into_inner())
}

pub fn side_by_side() -> std::sync::RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|e| e.into_inner())
}

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tcpscope::testhost::{ChildGuard, TestHosts};

pub const PORT: u16 = 8080;

pub fn tcpscope_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tcpscope")
}

/// `tcpscope ARGS` inside namespace `ns`, started and attached.
pub fn start_tcpscope(ns: &str, args: &[&str]) -> ChildGuard {
    start_tcpscope_link(ns, args).0
}

/// As start_tcpscope, plus the id of the BPF link it reported.
pub fn start_tcpscope_link(ns: &str, args: &[&str]) -> (ChildGuard, u32) {
    let mut cmd = TestHosts::command_in(ns, tcpscope_bin());
    cmd.args(args).stdout(Stdio::piped());
    let (child, lines) =
        ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).expect("tcpscope attaches");
    let line = lines.lock().unwrap().iter().find(|l| l.contains("(link id ")).cloned().unwrap();
    let id = line.split("(link id ").nth(1).and_then(|r| r.split(')').next()).and_then(|n| n.parse().ok());
    (child, id.unwrap_or_else(|| panic!("no link id in {line:?}")))
}

/// Whether BPF link `id` still exists (links live in no namespace).
pub fn link_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .expect("bpftool runs (install it: scripts/setup.sh)")
        .status
        .success()
}

/// All of a finished child's stdout.
pub fn stdout_of(child: &mut ChildGuard) -> String {
    child.stdout_text()
}

/// tshark capturing on `ifname` inside `ns` into a pcapng file.
pub struct Tshark {
    pub guard: ChildGuard,
    pub file: PathBuf,
}

impl Tshark {
    pub fn start(ns: &str, ifname: &str, filter: &str, file: &Path) -> Tshark {
        let mut cmd = TestHosts::command_in(ns, "tshark");
        cmd.args(["-i", ifname, "-f", filter, "-w"]).arg(file).stdout(Stdio::null());
        let (guard, _) = ChildGuard::spawn_until_ready(cmd, "Capture started", Duration::from_secs(30))
            .expect("tshark starts (install it: scripts/setup.sh)");
        Tshark { guard, file: file.to_path_buf() }
    }

    /// Stops the capture and decodes every TCP packet in it with `fields`.
    pub fn stop_and_read(mut self, fields: &[&str]) -> Vec<Vec<String>> {
        std::thread::sleep(Duration::from_millis(300));
        self.guard.interrupt_and_wait(Duration::from_secs(20)).expect("tshark stops");
        read_pcap_fields(&self.file, fields)
    }
}

/// tshark's decoding of every TCP packet of a capture file, one row per packet.
pub fn read_pcap_fields(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args([
        "-Y",
        "tcp",
        "-o",
        "tcp.relative_sequence_numbers:FALSE",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=f",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark runs");
    assert!(out.status.success(), "tshark -r failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// A listener on the server host's IPv4 address, `port`.
pub fn listen_in_server(hosts: &TestHosts, port: u16) -> TcpListener {
    TestHosts::run_in(&hosts.server_ns, move || {
        TcpListener::bind((tcpscope::testhost::SERVER_V4, port)).expect("bind on the server host")
    })
    .join()
    .expect("thread")
    .expect("entering the server namespace")
}

/// Runs a server in the server namespace that reads each connection to EOF
/// and replies with the byte count; the client sends `payload` over IPv4 and
/// then IPv6. Returns the byte counts the server saw.
pub fn exchange(hosts: &TestHosts, payload_len: usize) -> Vec<usize> {
    let listener = TestHosts::run_in(&hosts.server_ns, || TcpListener::bind(("::", PORT)).expect("bind"))
        .join()
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).expect("read");
            s.write_all(format!("{}", buf.len()).as_bytes()).unwrap();
            seen.push(buf.len());
        }
        seen
    });
    let client = TestHosts::run_in(&hosts.client_ns, move || {
        for v6 in [false, true] {
            let addr = SocketAddr::new(TestHosts::server_addr(v6), PORT);
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
            s.write_all(&vec![b'x'; payload_len]).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut reply = String::new();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.read_to_string(&mut reply).unwrap();
            assert_eq!(reply, payload_len.to_string());
        }
    });
    client.join().unwrap().unwrap();
    server.join().unwrap()
}

/// Loads nftables `rules` in namespace `ns` (gone with the namespace).
pub fn nft(ns: &str, rules: &str) {
    let mut cmd = TestHosts::command_in(ns, "nft");
    cmd.args(["-f", "-"]).stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("nft (scripts/setup.sh installs nftables)");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {rules}");
}

/// The server advertises an MSS of `mss` bytes (IPv4 and IPv6): every
/// ClientHello and most request heads reach it in several segments.
pub fn small_mss(hosts: &TestHosts, mss: u32) {
    for (family, cidr) in [("-4", "198.18.0.0/24"), ("-6", "2001:db8::/64")] {
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                &hosts.server_ns,
                family,
                "route",
                "replace",
                cidr,
                "dev",
                tcpscope::testhost::SERVER_IF,
            ])
            .args(["advmss", &mss.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

/// A web server in the server's namespace (Python's http.server): HTTPS on
/// 443 with a self-signed certificate made for the test, any SNI, and
/// plain HTTP on 8080; every GET or DELETE answers `ok`. The TLS handshake
/// happens in each connection's thread, so a client stalled by the guard
/// stalls nobody else.
pub fn web_server(hosts: &TestHosts, dir: &Path) -> tcpscope::testhost::ChildGuard {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", "/CN=tcpscope-test", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = format!(
        r#"
import http.server, ssl, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    timeout = 10
    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Length', '2')
        self.end_headers()
        self.wfile.write(b'ok')
    do_DELETE = do_GET
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain('{cert}', '{key}')
tls = S(('0.0.0.0', 443), H)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True, do_handshake_on_connect=False)
plain = S(('0.0.0.0', 8080), H)
threading.Thread(target=plain.serve_forever, daemon=True).start()
print('serving', file=sys.stderr, flush=True)
tls.serve_forever()
"#,
        cert = cert.display(),
        key = key.display()
    );
    let mut cmd = TestHosts::command_in(&hosts.server_ns, "/usr/bin/python3");
    cmd.args(["-c", &script]).stdout(std::process::Stdio::null());
    tcpscope::testhost::ChildGuard::spawn_until_ready(cmd, "serving", Duration::from_secs(30)).unwrap().0
}

/// Runs `program args` in the client's namespace, bounded to 15 s; its
/// standard output if it succeeded.
pub fn client_ok(hosts: &TestHosts, program: &str, args: &[&str]) -> Option<String> {
    let out = TestHosts::command_in(&hosts.client_ns, "timeout")
        .arg("15")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs it)"));
    assert_ne!(out.status.code(), Some(127), "{program} is missing");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Python's ssl from the client to the web server's 443 with server name
/// `name`: the status line of a GET, or None if the handshake or the
/// answer did not come within 3 s.
pub fn tls_get(hosts: &TestHosts, name: &str) -> Option<String> {
    let server = tcpscope::testhost::SERVER_V4;
    let code = format!(
        "import socket, ssl\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\n\
         s = socket.create_connection(('{server}', 443), timeout=3)\nt = ctx.wrap_socket(s, server_hostname='{name}')\n\
         t.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint(t.recv(100).split(b'\\r\\n')[0].decode())\n"
    );
    client_ok(hosts, "/usr/bin/python3", &["-c", &code])
}

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, of: &'a [T]) -> &'a T {
        &of[self.below(of.len())]
    }
}
