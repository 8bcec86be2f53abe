//! The TLS ClientHello: reassembled from its records (a post-quantum key
//! share makes it larger than one segment, and it may span records), then
//! parsed by tls-parser.

use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_message_handshake, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};

use super::{Identified, L7, MAX_STREAM};

/// A GREASE value (RFC 8701): 0x?a?a, both bytes alike.
fn grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

fn version_name(v: u16) -> String {
    match v {
        0x0304 => "1.3".into(),
        0x0303 => "1.2".into(),
        0x0302 => "1.1".into(),
        0x0301 => "1.0".into(),
        0x0300 => "ssl3".into(),
        _ => format!("0x{v:04x}"),
    }
}

/// Post-quantum hybrids and ML-KEM (IANA TLS Supported Groups), and the
/// draft Kyber hybrid browsers shipped first.
fn post_quantum(g: u16) -> bool {
    matches!(g, 0x0200..=0x0202 | 0x11eb..=0x11ed | 0x6399 | 0x639a)
}

fn group_name(g: u16) -> String {
    match g {
        0x0017 => "secp256r1".into(),
        0x0018 => "secp384r1".into(),
        0x0019 => "secp521r1".into(),
        0x001d => "x25519".into(),
        0x001e => "x448".into(),
        0x0100 => "ffdhe2048".into(),
        0x0101 => "ffdhe3072".into(),
        0x0102 => "ffdhe4096".into(),
        0x0200 => "MLKEM512".into(),
        0x0201 => "MLKEM768".into(),
        0x0202 => "MLKEM1024".into(),
        0x11eb => "SecP256r1MLKEM768".into(),
        0x11ec => "X25519MLKEM768".into(),
        0x11ed => "SecP384r1MLKEM1024".into(),
        0x6399 => "X25519Kyber768Draft00".into(),
        _ => format!("0x{g:04x}"),
    }
}

/// The groups of a key_share extension's client shares.
fn key_share_groups(raw: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let Some(list) = raw.get(2..) else { return out };
    let mut i = 0;
    while i + 4 <= list.len() {
        let g = u16::from_be_bytes([list[i], list[i + 1]]);
        let len = usize::from(u16::from_be_bytes([list[i + 2], list[i + 3]]));
        out.push(g);
        i += 4 + len;
    }
    out
}

/// A ClientHello at the stream's start: None if it is not TLS, More until
/// the handshake message is whole.
pub(super) fn client_hello(data: &[u8]) -> Option<Identified> {
    // A handshake record: type 22, version 3.x.
    if data[0] != 22 || data.get(1).is_some_and(|v| *v != 3) {
        return None;
    }
    // The handshake message, from as many records as it takes.
    let mut hs = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = data.get(at..at + 5) else { return Some(Identified::More) };
        if header[0] != 22 || header[1] != 3 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 + 256 {
            return None;
        }
        let Some(body) = data.get(at + 5..at + 5 + len) else {
            return Some(Identified::More);
        };
        hs.extend_from_slice(body);
        at += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return None; // not a ClientHello
            }
            let want = 4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if want > MAX_STREAM {
                return None;
            }
            if hs.len() >= want {
                hs.truncate(want);
                break;
            }
        }
    }
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) =
        parse_tls_message_handshake(&hs)
    else {
        return None;
    };
    let mut l7 = L7 { proto: "tls", ..Default::default() };
    let mut versions = Vec::new();
    let (mut groups, mut shares) = (Vec::new(), Vec::new());
    let exts =
        ch.ext.and_then(|e| parse_tls_client_hello_extensions(e).ok()).map(|(_, v)| v).unwrap_or_default();
    for e in &exts {
        match e {
            TlsExtension::SNI(names) => {
                l7.sni = names.first().map(|(_, n)| String::from_utf8_lossy(n).into_owned());
            }
            TlsExtension::ALPN(list) => {
                l7.alpn = Some(list.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect());
            }
            TlsExtension::SupportedVersions(list) => {
                versions = list.iter().map(|v| v.0).filter(|v| !grease(*v)).collect();
            }
            TlsExtension::EllipticCurves(list) => {
                groups = list.iter().map(|g| g.0).filter(|g| !grease(*g)).collect();
            }
            TlsExtension::KeyShare(raw) => {
                shares = key_share_groups(raw).into_iter().filter(|g| !grease(*g)).collect();
            }
            TlsExtension::Unknown(t, _) if t.0 == 0xfe0d => l7.ech = Some(true),
            _ => {}
        }
    }
    if versions.is_empty() {
        versions.push(ch.version.0);
    }
    l7.versions = Some(versions.into_iter().map(version_name).collect());
    l7.pq = Some(groups.iter().chain(&shares).any(|g| post_quantum(*g)));
    l7.groups = Some(groups.into_iter().map(group_name).collect());
    l7.key_share_groups = Some(shares.into_iter().map(group_name).collect());
    Some(Identified::Done(Box::new(l7)))
}
