//! L7 hints: what a connection speaks, from the first bytes its client
//! sends, by content (the port only decides `port_mismatch`). HTTP/1 with
//! httparse, TLS ClientHellos with tls-parser, DNS over TCP with
//! hickory-proto; the h2c preface and SSH banners by their fixed forms.
//! `identify` says whether the bytes so far are enough; `track` reassembles
//! each client stream from its segments.

pub mod custom;
mod tls;
pub mod track;

use serde::Serialize;

/// The client bytes kept per connection until its first message is whole.
pub const MAX_STREAM: usize = 16 * 1024;

/// One connection's L7 hint: a flat object, fields present where known.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct L7 {
    /// http, http2, tls, dns, ssh, a custom protocol's name, or unknown.
    pub proto: std::borrow::Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    /// Offered versions, best first: "1.3", "1.2", ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<String>>,
    /// Named groups offered (supported_groups), GREASE left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Groups with a key share in the ClientHello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_share_groups: Option<Vec<String>>,
    /// A post-quantum (ML-KEM or Kyber hybrid) group is offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pq: Option<bool>,
    /// FoxIO's JA4 fingerprint of the ClientHello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ja4: Option<String>,
    /// An encrypted_client_hello extension is there (the SNI is the outer one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ech: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub banner: Option<String>,
    /// unknown: up to 16 first bytes, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bytes: Option<String>,
    pub port_mismatch: bool,
    /// Why no first message was identified: closed, too_large, timeout,
    /// state_evicted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<&'static str>,
    /// A custom protocol's fields (see `custom`), at the same level.
    #[serde(flatten)]
    pub fields: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The keys of the object: a custom protocol's fields may not take them.
pub const KEYS: [&str; 24] = [
    "proto",
    "method",
    "path",
    "host",
    "user_agent",
    "content_type",
    "content_length",
    "sni",
    "alpn",
    "versions",
    "groups",
    "key_share_groups",
    "pq",
    "ja4",
    "ech",
    "qname",
    "qtype",
    "banner",
    "first_bytes",
    "port_mismatch",
    "gave_up",
    "ts_ns",
    "src",
    "dst",
];

/// What the bytes so far say.
#[derive(Debug, PartialEq)]
pub enum Identified {
    Done(Box<L7>),
    /// A message has begun and is not whole yet.
    More,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `port` usually serves `proto` against what was seen: TLS on 80,
/// HTTP on 443, and anything but HTTP/1 and h2c on 80.
fn port_mismatch(proto: &str, port: u16) -> bool {
    match port {
        80 => proto != "http" && proto != "http2",
        443 => proto == "http",
        _ => false,
    }
}

fn http(data: &[u8]) -> Option<Identified> {
    // A request line starts with an upper-case token and a space.
    let token = data.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if token == 0 || token > 16 || data.get(token).is_some_and(|b| *b != b' ') {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Partial) => Some(Identified::More),
        Err(httparse::Error::TooManyHeaders) | Err(_) if data.len() <= token => Some(Identified::More),
        Err(_) => None,
        Ok(httparse::Status::Complete(_)) => {
            let header = |name: &str| {
                req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| text(h.value))
            };
            Some(Identified::Done(Box::new(L7 {
                proto: "http".into(),
                method: req.method.map(str::to_string),
                path: req.path.map(str::to_string),
                host: header("host"),
                user_agent: header("user-agent"),
                content_type: header("content-type"),
                content_length: header("content-length").and_then(|v| v.trim().parse().ok()),
                ..Default::default()
            })))
        }
    }
}

fn ssh(data: &[u8]) -> Option<Identified> {
    if !data.starts_with(b"SSH-") && !b"SSH-".starts_with(data) {
        return None;
    }
    match data.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let line = &data[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Some(Identified::Done(Box::new(L7 {
                proto: "ssh".into(),
                banner: Some(text(line)),
                ..Default::default()
            })))
        }
        None if data.len() < 255 => Some(Identified::More),
        None => None,
    }
}

fn dns(data: &[u8]) -> Option<Identified> {
    use hickory_proto::op::{Message, MessageType};
    use hickory_proto::serialize::binary::BinDecodable;
    if data.len() < 2 {
        return Some(Identified::More);
    }
    let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    // A header (12 bytes) and a question at least; a query (QR clear)
    // asking one or more questions.
    if len < 17 {
        return None;
    }
    // The message starts at 2: QR (a response) in byte 4, the question
    // count in bytes 6 and 7.
    if data.len() >= 5 && data[4] & 0x80 != 0 {
        return None;
    }
    if data.len() >= 8 && u16::from_be_bytes([data[6], data[7]]) == 0 {
        return None;
    }
    // The rest of a query's header, once it is there: an opcode DNS has
    // (query 0 to DSO 6), the reserved Z bit clear, a few questions, and a
    // standard query's empty answer and (but for IXFR's SOA) authority
    // sections. Without this, any two bytes read as a length, and a stream
    // of other bytes waited for it (up to 64 KiB) before it was named:
    // bench l7's bulk connection of 'Z's was given up as too_large.
    let word = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]);
    if data.len() >= 14 {
        let opcode = (data[4] >> 3) & 0x0f;
        let plausible = opcode <= 6
            && data[5] & 0x40 == 0
            && word(6) <= 4
            && (opcode != 0 || (word(8) == 0 && word(10) <= 1))
            && word(12) <= 4;
        if !plausible {
            return None;
        }
    }
    // Past what a stream keeps, a query could not be read whole anyway.
    if len > MAX_STREAM - 2 {
        return None;
    }
    if data.len() < 2 + len {
        return Some(Identified::More);
    }
    let msg = Message::from_bytes(&data[2..2 + len]).ok()?;
    if msg.message_type() != MessageType::Query {
        return None;
    }
    let q = msg.queries().first()?;
    let name = q.name().to_utf8();
    let qname = name.strip_suffix('.').unwrap_or(&name).to_string();
    Some(Identified::Done(Box::new(L7 {
        proto: "dns".into(),
        qname: Some(qname),
        qtype: Some(u16::from(q.query_type())),
        ..Default::default()
    })))
}

/// What the client's first bytes `data` (in order, from the stream's
/// start) say, for a connection to `port`. `closed`: no more will come.
pub fn identify(data: &[u8], port: u16, closed: bool) -> Identified {
    identify_with(&custom::Protocols::default(), data, port, closed)
}

/// As `identify`, trying the `custom` protocols first.
pub fn identify_with(custom: &custom::Protocols, data: &[u8], port: u16, closed: bool) -> Identified {
    let found = if data.is_empty() {
        None
    } else if let Some(c) = custom.identify(data, port) {
        Some(match c {
            Ok((name, fields)) => {
                Identified::Done(Box::new(L7 { proto: name.into(), fields, ..Default::default() }))
            }
            Err(()) => Identified::More,
        })
    } else if H2_PREFACE.starts_with(&data[..data.len().min(H2_PREFACE.len())]) {
        if data.len() >= H2_PREFACE.len() {
            Some(Identified::Done(Box::new(L7 { proto: "http2".into(), ..Default::default() })))
        } else {
            Some(Identified::More)
        }
    } else {
        tls::client_hello(data).or_else(|| http(data)).or_else(|| ssh(data)).or_else(|| dns(data))
    };
    let mut l7 = match found {
        Some(Identified::Done(l7)) => l7,
        Some(Identified::More) if !closed && data.len() < MAX_STREAM => return Identified::More,
        _ if data.len() < 16 && !closed => return Identified::More,
        _ => Box::new(L7 {
            proto: "unknown".into(),
            first_bytes: (!data.is_empty()).then(|| hex(&data[..data.len().min(16)])),
            ..Default::default()
        }),
    };
    l7.port_mismatch = port_mismatch(&l7.proto, port);
    Identified::Done(l7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(data: &[u8], port: u16) -> L7 {
        match identify(data, port, false) {
            Identified::Done(l7) => *l7,
            Identified::More => panic!("more wanted for {:?}", String::from_utf8_lossy(data)),
        }
    }

    #[test]
    fn bytes_that_only_look_like_a_dns_length_are_named_unknown_at_once() {
        // "ZZ" reads as a length of 23,130; the header that follows is no
        // query's (opcode 11).
        let zs = [b'Z'; 20];
        match identify(&zs, 5301, false) {
            Identified::Done(l7) => assert_eq!(l7.proto, "unknown"),
            Identified::More => panic!("waited for a length that is no DNS length"),
        }
        // A real query still waits for its bytes, then is named.
        let mut q = vec![0, 29, 0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[
            7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'o', b'r', b'g', 0, 0, 1, 0, 1,
        ]);
        assert!(matches!(identify(&q[..16], 53, false), Identified::More));
        let Identified::Done(l7) = identify(&q, 53, false) else { panic!("a whole query") };
        assert_eq!((l7.qname.as_deref(), l7.qtype), (Some("example.org"), Some(1)));
    }

    #[test]
    fn http_requests_are_named_with_their_fields() {
        let req = b"POST /api/v1/items?x=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: curl/8.5.0\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"a\":1}";
        let l7 = done(req, 8080);
        assert_eq!(l7.proto, "http");
        assert_eq!(l7.method.as_deref(), Some("POST"));
        assert_eq!(l7.path.as_deref(), Some("/api/v1/items?x=1"));
        assert_eq!(l7.host.as_deref(), Some("a.example"));
        assert_eq!(l7.user_agent.as_deref(), Some("curl/8.5.0"));
        assert_eq!(l7.content_type.as_deref(), Some("application/json"));
        assert_eq!(l7.content_length, Some(17));
        assert!(!l7.port_mismatch);
        assert!(done(req, 443).port_mismatch, "HTTP on 443");
        // Cut anywhere before the blank line: more is wanted.
        let head = req.iter().position(|b| *b == b'{').unwrap();
        for cut in 1..head - 1 {
            assert_eq!(identify(&req[..cut], 80, false), Identified::More, "cut at {cut}");
        }
    }

    #[test]
    fn h2c_ssh_dns_and_unknown() {
        assert_eq!(done(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", 80).proto, "http2");
        assert_eq!(identify(b"PRI * HTTP/2", 80, false), Identified::More);
        let ssh = done(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", 2222);
        assert_eq!(
            (ssh.proto.as_ref(), ssh.banner.as_deref()),
            ("ssh", Some("SSH-2.0-OpenSSH_9.2p1 Debian-2"))
        );
        assert!(!ssh.port_mismatch);
        assert!(done(b"SSH-2.0-x\r\n", 80).port_mismatch, "not HTTP on 80");
        // A DNS query for www.example.com, type AAAA (28), with its length prefix.
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["www", "example", "com"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 28, 0, 1]);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let d = done(&framed, 53);
        assert_eq!(
            (d.proto.as_ref(), d.qname.as_deref(), d.qtype),
            ("dns", Some("www.example.com"), Some(28))
        );
        assert_eq!(identify(&framed[..10], 53, false), Identified::More);
        let u = done(b"\x00\x01binary protocol here", 9000);
        assert_eq!(
            (u.proto.as_ref(), u.first_bytes.as_deref()),
            ("unknown", Some("000162696e6172792070726f746f636f"))
        );
        // Nothing sent and closed: unknown without bytes.
        assert!(
            matches!(identify(b"", 80, true), Identified::Done(l) if l.proto == "unknown" && l.first_bytes.is_none())
        );
    }
}
