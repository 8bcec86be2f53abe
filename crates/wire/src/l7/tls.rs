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

/// The extensions of a ClientHello's extension block, in wire order:
/// (type, body). Stops at the first that does not fit.
fn raw_extensions(mut ext: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while ext.len() >= 4 {
        let t = u16::from_be_bytes([ext[0], ext[1]]);
        let len = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        let Some(body) = ext.get(4..4 + len) else { break };
        out.push((t, body));
        ext = &ext[4 + len..];
    }
    out
}

/// A list of u16 behind a length prefix of `prefix` bytes.
fn u16_list(body: &[u8], prefix: usize) -> Vec<u16> {
    body.get(prefix..).unwrap_or(&[]).chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
}

fn sha12(s: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(s.as_bytes())[..6])
}

/// Lower-case hex digits of `b`, appended to `out`. By hand: a `format!`
/// per byte or word took a tenth of `l7 -r`'s time on a capture of
/// ClientHellos (perf, `bench l7`'s offline case).
fn push_hex(out: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        out.push(char::from(DIGITS[usize::from(x >> 4)]));
        out.push(char::from(DIGITS[usize::from(x & 0x0f)]));
    }
}

fn hex4(v: &[u16]) -> String {
    let mut out = String::with_capacity(v.len() * 5);
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_hex(&mut out, &x.to_be_bytes());
    }
    out
}

/// JA4 (FoxIO's TLS client fingerprint, technical_details/JA4.md) of a
/// ClientHello over TCP: its legacy version, cipher suites, and extension
/// block.
pub fn ja4(legacy_version: u16, ciphers: &[u16], ext: &[u8]) -> String {
    let exts = raw_extensions(ext);
    let types: Vec<u16> = exts.iter().map(|(t, _)| *t).filter(|t| !grease(*t)).collect();
    let body = |t: u16| exts.iter().find(|(x, _)| *x == t).map(|(_, b)| *b);
    let version = body(0x002b)
        .map(|b| u16_list(b, 1).into_iter().filter(|v| !grease(*v)).max().unwrap_or(0))
        .unwrap_or(legacy_version);
    let version = match version {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        _ => "00",
    };
    let sni = if body(0x0000).is_some() { 'd' } else { 'i' };
    // The first ALPN value: its first and last characters, or of its hex
    // form when either is not alphanumeric.
    let alpn = body(0x0010)
        .and_then(|b| {
            let len = usize::from(*b.get(2)?);
            b.get(3..3 + len).filter(|v| !v.is_empty())
        })
        .map_or_else(
            || "00".to_string(),
            |v| {
                let (first, last) = (v[0], v[v.len() - 1]);
                if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
                    format!("{}{}", first as char, last as char)
                } else {
                    let h = hex(v);
                    format!("{}{}", &h[..1], &h[h.len() - 1..])
                }
            },
        );
    let mut cs: Vec<u16> = ciphers.iter().copied().filter(|c| !grease(*c)).collect();
    let a = format!("t{version}{sni}{:02}{:02}{alpn}", cs.len().min(99), types.len().min(99));
    cs.sort_unstable();
    let b = if cs.is_empty() { "000000000000".to_string() } else { sha12(&hex4(&cs)) };
    let mut sorted: Vec<u16> = types.iter().copied().filter(|t| *t != 0x0000 && *t != 0x0010).collect();
    sorted.sort_unstable();
    let sigs: Vec<u16> = body(0x000d).map(|b| u16_list(b, 2)).unwrap_or_default();
    let c = if sorted.is_empty() {
        "000000000000".to_string()
    } else if sigs.is_empty() {
        sha12(&hex4(&sorted))
    } else {
        sha12(&format!("{}_{}", hex4(&sorted), hex4(&sigs)))
    };
    format!("{a}_{b}_{c}")
}

fn hex(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 2);
    push_hex(&mut out, b);
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
    let mut l7 = L7 { proto: "tls".into(), ..Default::default() };
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
    let ciphers: Vec<u16> = ch.ciphers.iter().map(|c| c.0).collect();
    l7.ja4 = Some(ja4(ch.version.0, &ciphers, ch.ext.unwrap_or(&[])));
    l7.versions = Some(versions.into_iter().map(version_name).collect());
    l7.pq = Some(groups.iter().chain(&shares).any(|g| post_quantum(*g)));
    l7.groups = Some(groups.into_iter().map(group_name).collect());
    l7.key_share_groups = Some(shares.into_iter().map(group_name).collect());
    Some(Identified::Done(Box::new(l7)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(t: u16, body: &[u8]) -> Vec<u8> {
        let mut v = t.to_be_bytes().to_vec();
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn list16(prefix: usize, v: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = v.len() * 2;
        if prefix == 1 {
            out.push(n as u8);
        } else {
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        for x in v {
            out.extend_from_slice(&x.to_be_bytes());
        }
        out
    }

    /// The example of FoxIO's JA4 specification (technical_details/JA4.md,
    /// "Example" and "Raw Output"): its ciphers, extensions and signature
    /// algorithms in their original order, with GREASE values added (which
    /// must not count), give its published fingerprint.
    #[test]
    fn a_post_quantum_client_hello_is_named_whole_and_not_before() {
        let hello = crate::testpkt::client_hello("pq.example", true);
        // 5 + 4 + 83 (to the extensions) + 1,636 (SNI 19, groups 12, signatures 12,
        // ALPN 18, versions 9, key shares 1,262, padding 304): counted by hand.
        assert_eq!(hello.len(), 1728);
        assert!(matches!(super::super::identify(&hello[..1400], 443, false), Identified::More));
        let Identified::Done(l7) = super::super::identify(&hello, 443, false) else { panic!("not named") };
        assert_eq!((l7.proto.as_ref(), l7.sni.as_deref(), l7.pq), ("tls", Some("pq.example"), Some(true)));
        assert_eq!(l7.alpn, Some(vec!["h2".to_string(), "http/1.1".to_string()]));
        assert_eq!(l7.versions, Some(vec!["1.3".to_string(), "1.2".to_string()]));
    }

    #[test]
    fn ja4_of_the_specifications_example() {
        let ciphers = [
            0x1a1a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
            0x009c, 0x009d, 0x002f, 0x0035,
        ];
        let sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601];
        let order = [
            0x2a2a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012,
            0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
        ];
        let mut block = Vec::new();
        for t in order {
            let body = match t {
                0x0000 => [&[0, 12, 0, 0, 9][..], b"a.example"].concat(),
                0x0010 => [&[0, 12, 2][..], b"h2", &[8], b"http/1.1"].concat(),
                0x002b => list16(1, &[0x3a3a, 0x0304, 0x0303]),
                0x000d => list16(2, &sigs),
                _ => Vec::new(),
            };
            block.extend(ext(t, &body));
        }
        assert_eq!(ja4(0x0303, &ciphers, &block), "t13d1516h2_8daaf6152771_e5627efa2ab1");
        // Without signature algorithms, the spec's hash of the extensions alone.
        let no_sigs: Vec<u8> = raw_extensions(&block)
            .into_iter()
            .filter(|(t, _)| *t != 0x000d)
            .flat_map(|(t, b)| ext(t, b))
            .collect();
        // (one extension fewer: 15; and 000d gone from the sorted list, so
        // not the spec's 6d807ffa2a79, which keeps 000d in the list)
        assert!(ja4(0x0303, &ciphers, &no_sigs).starts_with("t13d1515h2_8daaf6152771_"));
        assert_eq!(
            sha12("0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"),
            "6d807ffa2a79"
        );
        // No SNI, no ALPN, TLS 1.2 only.
        let bare = ext(0x000a, &list16(2, &[0x001d]));
        assert_eq!(&ja4(0x0303, &[0xc02f], &bare)[..10], "t12i010100");
    }
}
