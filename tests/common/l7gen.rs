//! The L7 corpus generator: connections whose first messages come split,
//! reordered and retransmitted, over IPv4 and IPv6, on ports that match
//! their protocol and ports that do not, each with what it carries (the
//! truth). Frames are built with etherparse and the ClientHellos by
//! `testpkt`, independently of both tcpscope decoders. The clients'
//! addresses (198.18.0.77, 2001:db8::77) are not assigned anywhere, so a
//! server's answers to these crafted segments go nowhere.

use std::net::IpAddr;

use etherparse::PacketBuilder;
use serde_json::{json, Value};

pub const CLIENT_V4: [u8; 4] = [198, 18, 0, 77];
pub const CLIENT_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x77];
const ISN: u32 = 0x1000_0000;

/// One connection: its first message cut in pieces (stream offset,
/// bytes) in the order they are sent, and what must be read from it.
pub struct Conn {
    pub v6: bool,
    pub sport: u16,
    pub dport: u16,
    pub pieces: Vec<(usize, Vec<u8>)>,
    /// Keys of the `l7` object and their values.
    pub truth: Value,
    pub what: &'static str,
}

/// `msg` cut at `cuts`, the pieces sent in `order` (indices may repeat:
/// retransmissions).
fn cut(msg: &[u8], cuts: &[usize], order: &[usize]) -> Vec<(usize, Vec<u8>)> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(msg.len());
    let pieces: Vec<(usize, Vec<u8>)> = bounds.windows(2).map(|w| (w[0], msg[w[0]..w[1]].to_vec())).collect();
    order.iter().map(|i| pieces[*i].clone()).collect()
}

fn dns_query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0]);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    [&(q.len() as u16).to_be_bytes()[..], &q].concat()
}

pub fn corpus() -> Vec<Conn> {
    use tcpscope::testpkt::{client_hello, client_hello_with};
    let alpn = json!(["h2", "http/1.1"]);
    let tls = |sni: &str, pq: bool, mismatch: bool| json!({"proto": "tls", "sni": sni, "alpn": alpn, "pq": pq, "port_mismatch": mismatch});
    let pq = client_hello("split2.example", true);
    let reordered = client_hello("reordered.example", true);
    let retrans = client_hello("retransmitted.example", true);
    let v6 = client_hello("v6.example", true);
    let on80 = client_hello("on80.example", false);
    let tiny = client_hello("tiny.example", true);
    let ech = client_hello_with(
        "public.example",
        false,
        &[(0xfe0d, vec![0, 0, 1, 0, 1, 0x2a, 0, 4, 1, 2, 3, 4, 0, 8, 9, 9, 9, 9, 9, 9, 9, 9])],
    );
    let http = b"GET /gen?q=1 HTTP/1.1\r\nHost: gen.example\r\nUser-Agent: l7gen/1.0\r\nAccept: */*\r\n\r\n"
        .to_vec();
    let http443 = b"POST /up HTTP/1.1\r\nHost: h443.example\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    let dns = dns_query("gen.example.org", 28);
    let ssh = b"SSH-2.0-l7gen_9.9\r\n".to_vec();
    vec![
        Conn {
            v6: false,
            sport: 42001,
            dport: 443,
            pieces: cut(&pq, &[1000], &[0, 1]),
            truth: tls("split2.example", true, false),
            what: "ClientHello in 2 segments",
        },
        Conn {
            v6: false,
            sport: 42002,
            dport: 443,
            pieces: cut(&reordered, &[600, 1200], &[2, 0, 1]),
            truth: tls("reordered.example", true, false),
            what: "ClientHello in 3 segments, the last first",
        },
        Conn {
            v6: false,
            sport: 42003,
            dport: 443,
            pieces: cut(&retrans, &[700, 1300], &[0, 0, 1, 0, 2]),
            truth: tls("retransmitted.example", true, false),
            what: "ClientHello with its first segment retransmitted twice",
        },
        Conn {
            v6: true,
            sport: 42004,
            dport: 443,
            pieces: cut(&v6, &[500, 1100], &[1, 0, 2]),
            truth: tls("v6.example", true, false),
            what: "IPv6, reordered",
        },
        Conn {
            v6: false,
            sport: 42005,
            dport: 80,
            pieces: cut(&on80, &[100], &[0, 1]),
            truth: tls("on80.example", false, true),
            what: "TLS on port 80",
        },
        Conn {
            v6: false,
            sport: 42006,
            dport: 443,
            pieces: cut(&tiny, &(1..18).map(|i| i * 100).collect::<Vec<_>>(), &(0..18).collect::<Vec<_>>()),
            truth: tls("tiny.example", true, false),
            what: "ClientHello in 18 segments of 100 bytes",
        },
        Conn {
            v6: false,
            sport: 42007,
            dport: 443,
            pieces: cut(&ech, &[200], &[0, 1]),
            truth: json!({"proto": "tls", "sni": "public.example", "ech": true, "port_mismatch": false}),
            what: "ECH: the outer SNI, and ech",
        },
        Conn {
            v6: false,
            sport: 42008,
            dport: 8080,
            pieces: cut(&http, &[10, 40], &[1, 2, 0]),
            truth: json!({"proto": "http", "method": "GET", "path": "/gen?q=1", "host": "gen.example", "user_agent": "l7gen/1.0", "port_mismatch": false}),
            what: "HTTP request header in 3 segments, reordered",
        },
        Conn {
            v6: true,
            sport: 42009,
            dport: 443,
            pieces: cut(&http443, &[30], &[0, 1]),
            truth: json!({"proto": "http", "method": "POST", "path": "/up", "host": "h443.example", "content_type": "application/json", "content_length": 2, "port_mismatch": true}),
            what: "HTTP on 443, IPv6",
        },
        Conn {
            v6: false,
            sport: 42010,
            dport: 53,
            pieces: cut(&dns, &[1], &[0, 1]),
            truth: json!({"proto": "dns", "qname": "gen.example.org", "qtype": 28, "port_mismatch": false}),
            what: "DNS over TCP, the length prefix split",
        },
        Conn {
            v6: true,
            sport: 42011,
            dport: 2222,
            pieces: cut(&ssh, &[4], &[1, 0]),
            truth: json!({"proto": "ssh", "banner": "SSH-2.0-l7gen_9.9", "port_mismatch": false}),
            what: "SSH banner on 2222, reordered, IPv6",
        },
        Conn {
            v6: false,
            sport: 42012,
            dport: 80,
            pieces: Vec::new(),
            truth: json!({"proto": "unknown", "gave_up": "closed", "port_mismatch": true}),
            what: "a connection that sends nothing",
        },
    ]
}

/// The client's and the server's addresses of a connection.
pub fn endpoints(c: &Conn) -> (IpAddr, IpAddr) {
    if c.v6 {
        (IpAddr::from(CLIENT_V6), IpAddr::V6(tcpscope::testhost::SERVER_V6))
    } else {
        (IpAddr::from(CLIENT_V4), IpAddr::V4(tcpscope::testhost::SERVER_V4))
    }
}

/// The connection's IP packets (ethertype, packet): its SYN, its pieces
/// (ACK and PSH), and a FIN after the whole message.
pub fn packets(c: &Conn) -> Vec<(u16, Vec<u8>)> {
    let builder = || match endpoints(c) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (0x0800, PacketBuilder::ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d)) => (0x86dd, PacketBuilder::ipv6(s.octets(), d.octets(), 64)),
        _ => unreachable!("one family"),
    };
    let write = |b: etherparse::PacketBuilderStep<etherparse::TcpHeader>, payload: &[u8]| {
        let mut out = Vec::new();
        b.write(&mut out, payload).expect("a Vec takes it");
        out
    };
    let (ethertype, b) = builder();
    let mut out = vec![(ethertype, write(b.tcp(c.sport, c.dport, ISN, 64240).syn(), &[]))];
    let mut end = 0;
    for (off, bytes) in &c.pieces {
        let (_, b) = builder();
        let seq = ISN.wrapping_add(1 + *off as u32);
        out.push((ethertype, write(b.tcp(c.sport, c.dport, seq, 502).ack(1).psh(), bytes)));
        end = end.max(off + bytes.len());
    }
    let (_, b) = builder();
    out.push((
        ethertype,
        write(b.tcp(c.sport, c.dport, ISN.wrapping_add(1 + end as u32), 502).ack(1).fin(), &[]),
    ));
    out
}

/// Every connection's packets, one connection after another, as a pcap
/// of Ethernet frames.
pub fn write_pcap(path: &std::path::Path, conns: &[Conn]) {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let file = std::fs::File::create(path).unwrap();
    let mut w = PcapWriter::with_header(
        file,
        PcapHeader { datalink: pcap_file::DataLink::ETHERNET, ..Default::default() },
    )
    .unwrap();
    let mut t = std::time::Duration::from_secs(1_800_000_000);
    for c in conns {
        for (ethertype, ip) in packets(c) {
            let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
            frame.extend_from_slice(&ethertype.to_be_bytes());
            frame.extend_from_slice(&ip);
            t += std::time::Duration::from_millis(1);
            w.write_packet(&PcapPacket::new(t, frame.len() as u32, &frame)).unwrap();
        }
    }
}
