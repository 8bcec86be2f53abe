//! Crafted frames on a test host's link: an AF_PACKET socket that sends
//! frames as they are written (fragments, extension-header chains) and
//! watches what comes back. The frames are assembled here byte by byte,
//! independently of etherparse and of both tcpscope decoders.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use tcpscope::testhost::TestHosts;

const ETH_P_ALL: u16 = 0x0003;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// An interface's MAC address, from `ip -j link` in its namespace.
pub fn mac_of(ns: &str, ifname: &str) -> [u8; 6] {
    let out = Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", ifname]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = v[0]["address"].as_str().unwrap().to_string();
    let b: Vec<u8> = s.split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
    b.try_into().unwrap()
}

/// A raw socket on one interface of a test host.
pub struct RawLink {
    fd: OwnedFd,
    ifindex: i32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl RawLink {
    /// On `ifname` in `ns`, sending to `peer_mac`.
    pub fn open(ns: &str, ifname: &str, peer_mac: [u8; 6]) -> RawLink {
        let name = ifname.to_string();
        let (fd, ifindex) = TestHosts::run_in(ns, move || {
            // SAFETY: plain socket(2) call; the fd is owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be())) };
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd is a new socket we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: c is NUL-terminated.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
            assert!(ifindex > 0);
            // SAFETY: zero is a valid sockaddr_ll; bind with its size.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex;
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of_val(&sll) as u32,
                )
            };
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            (fd, ifindex)
        })
        .join()
        .unwrap()
        .unwrap();
        let src_mac = mac_of(ns, ifname);
        RawLink { fd, ifindex, src_mac, dst_mac: peer_mac }
    }

    /// Sends an IP packet in an Ethernet frame.
    pub fn send(&self, ethertype: u16, ip_packet: &[u8]) {
        let mut f = Vec::with_capacity(14 + ip_packet.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip_packet);
        // SAFETY: zero is a valid sockaddr_ll; f outlives the call.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&self.dst_mac);
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                f.as_ptr() as *const libc::c_void,
                f.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&sll) as u32,
            )
        };
        assert_eq!(n, f.len() as isize, "sendto: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `timeout` for an incoming frame for which `pred` holds.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
                continue;
            }
            // SAFETY: zeroed sockaddr_ll to receive into; buf is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of_val(&sll) as u32;
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n > 0 && sll.sll_pkttype != libc::PACKET_OUTGOING as u8 && pred(&buf[..n as usize]) {
                return true;
            }
        }
        false
    }

    /// Waits for a SYN-ACK from port `from_port` to port `to_port`, over
    /// IPv4 or IPv6: the SYN reached a listening socket.
    pub fn syn_ack_seen(&self, timeout: Duration, from_port: u16, to_port: u16) -> bool {
        self.wait_for(timeout, |f| {
            let Some(tcp) = tcp_of(f) else { return false };
            tcp.len() >= 14
                && u16::from_be_bytes([tcp[0], tcp[1]]) == from_port
                && u16::from_be_bytes([tcp[2], tcp[3]]) == to_port
                && tcp[13] & (SYN | ACK) == SYN | ACK
        })
    }
}

/// The TCP header of an unfragmented IPv4 or IPv6 frame without extension
/// headers (what a host replies with).
fn tcp_of(f: &[u8]) -> Option<&[u8]> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let ip = f.get(14..)?;
    match ethertype {
        ETH_P_IP if ip.first()? >> 4 == 4 && *ip.get(9)? == 6 => ip.get(usize::from(ip[0] & 0xf) * 4..),
        ETH_P_IPV6 if *ip.get(6)? == 6 => ip.get(40..),
        _ => None,
    }
}

/// The Internet checksum of `data` added to `initial`.
fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: &[u8], dst: &[u8], len: usize) -> u32 {
    let mut sum = 6u32 + len as u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum
}

/// A TCP SYN segment (32 bytes: the fixed header, an MSS option and NOPs),
/// with its checksum for the given addresses (4 or 16 bytes each).
pub fn syn_segment(src: &[u8], dst: &[u8], sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut t = Vec::with_capacity(32);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[8 << 4, SYN]); // data offset 8 words
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(&[2, 4, 0x05, 0x78]); // MSS 1400
    t.extend_from_slice(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]); // NOPs, EOL
    let c = checksum(pseudo_sum(src, dst, t.len()), &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// IPv4 packets carrying `payload` (protocol TCP) cut at the byte offsets
/// `cuts` (multiples of 8): one fragment per piece, or one whole packet
/// when `cuts` is empty.
pub fn ipv4_fragments(src: [u8; 4], dst: [u8; 4], id: u16, payload: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(payload.len());
    bounds
        .windows(2)
        .map(|w| ipv4_fragment(src, dst, id, w[0], &payload[w[0]..w[1]], w[1] < payload.len()))
        .collect()
}

/// One IPv4 fragment: `piece` at byte `offset` (a multiple of 8).
pub fn ipv4_fragment(
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    offset: usize,
    piece: &[u8],
    more: bool,
) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, 6, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(0, &h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(piece);
    h
}

/// An IPv6 packet: the fixed header, then `chain` (extension headers as
/// (next-header value of this header, its bytes)), then `payload`. The
/// first header's value is `chain[0].0`, or `last` without a chain.
pub fn ipv6_packet(
    src: [u8; 16],
    dst: [u8; 16],
    chain: &[(u8, Vec<u8>)],
    last: u8,
    payload: &[u8],
) -> Vec<u8> {
    let body_len: usize = chain.iter().map(|(_, b)| b.len()).sum::<usize>() + payload.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body_len as u16).to_be_bytes());
    p.push(chain.first().map_or(last, |(t, _)| *t));
    p.push(64);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    for (i, (_, bytes)) in chain.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = chain.get(i + 1).map_or(last, |(t, _)| *t); // its next header
        p.extend_from_slice(&b);
    }
    p.extend_from_slice(payload);
    p
}

/// A destination-options (or hop-by-hop) header of `words` 8-byte units,
/// filled with PadN.
pub fn ipv6_options_header(words: usize) -> Vec<u8> {
    let mut h = vec![0, (words - 1) as u8, 1, (words * 8 - 4) as u8];
    h.resize(words * 8, 0);
    h
}

/// A fragment header: `offset` bytes in (a multiple of 8), `more` to follow.
pub fn ipv6_fragment_header(offset: usize, more: bool, id: u32) -> Vec<u8> {
    let off = (offset as u16) | u16::from(more);
    let mut h = vec![0, 0];
    h.extend_from_slice(&off.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// One IP counter of the namespace (`/proc/net/snmp` for IPv4, `snmp6` for
/// IPv6), e.g. ("Ip", "ReasmReqds") or ("", "Ip6ReasmReqds").
pub fn ip_counter(ns: &str, group: &str, name: &str) -> u64 {
    let file = if group.is_empty() { "/proc/net/snmp6" } else { "/proc/net/snmp" };
    let out = TestHosts::command_in(ns, "cat").arg(file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if group.is_empty() {
        return text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {file}"));
    }
    let mut rows = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}
