//! Custom protocols, described in TOML instead of code: a name, optional
//! ports, magic bytes at offsets (with masks), and fields to extract
//! (unsigned integers of 1, 2, 4 or 8 bytes, big- or little-endian, or
//! strings up to a delimiter or of a length). Tried before the built-in
//! protocols, in file order.
//!
//! ```toml
//! [[protocol]]
//! name = "mc"
//! ports = [7000]                      # optional: only on these server ports
//! magic = [{ offset = 0, value = "4d43" }]   # hex; mask = "ffff" optional
//! fields = [
//!   { name = "version", offset = 2, type = "u8" },
//!   { name = "txid", offset = 4, type = "u32", endian = "big" },
//!   { name = "tag", offset = 10, type = "string", until = "00", max = 32 },
//! ]
//! ```

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    protocol: Vec<Spec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    #[serde(default)]
    ports: Vec<u16>,
    magic: Vec<MagicSpec>,
    #[serde(default)]
    fields: Vec<FieldSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MagicSpec {
    offset: usize,
    value: String,
    mask: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    name: String,
    offset: usize,
    #[serde(rename = "type")]
    kind: String,
    endian: Option<String>,
    /// string: ends at this byte sequence (hex)...
    until: Option<String>,
    /// ...or after this many bytes; at most `max` either way.
    len: Option<usize>,
    max: Option<usize>,
}

#[derive(Debug, Clone)]
enum Field {
    Uint { name: String, offset: usize, size: usize, big: bool },
    Str { name: String, offset: usize, until: Option<Vec<u8>>, len: Option<usize>, max: usize },
}

#[derive(Debug, Clone)]
struct Protocol {
    name: String,
    ports: Vec<u16>,
    magic: Vec<(usize, Vec<u8>, Vec<u8>)>,
    fields: Vec<Field>,
}

/// The protocols of a file, checked.
#[derive(Debug, Clone, Default)]
pub struct Protocols(Vec<Protocol>);

fn unhex(s: &str, what: &str) -> Result<Vec<u8>> {
    let s = s.trim_start_matches("0x");
    if s.is_empty() || s.len() % 2 != 0 {
        bail!("{what} \"{s}\": give an even number of hex digits, such as \"4d43\"");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| anyhow!("{what} \"{s}\": not hex")))
        .collect()
}

/// Built-in names a custom protocol may not take.
const BUILT_IN: [&str; 6] = ["http", "http2", "tls", "dns", "ssh", "unknown"];

impl Protocols {
    /// Parses a protocols file; errors name the file, the line where TOML
    /// can, and the protocol.
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let f: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1).unwrap_or(0);
            anyhow!("{file}:{line}: {}", e.message().trim())
        })?;
        let mut out = Vec::new();
        for s in f.protocol {
            let at = |msg: String| anyhow!("{file}: protocol \"{}\": {msg}", s.name);
            if BUILT_IN.contains(&s.name.as_str()) || s.name.is_empty() {
                return Err(at("the name is empty or a built-in one: choose another".into()));
            }
            if s.magic.is_empty() {
                return Err(at("give at least one magic value, or every connection would match".into()));
            }
            let mut magic = Vec::new();
            for m in &s.magic {
                let value = unhex(&m.value, "magic value").map_err(|e| at(e.to_string()))?;
                let mask = match &m.mask {
                    Some(mask) => unhex(mask, "mask").map_err(|e| at(e.to_string()))?,
                    None => vec![0xff; value.len()],
                };
                if mask.len() != value.len() {
                    return Err(at(format!(
                        "mask \"{}\" and value \"{}\" differ in length",
                        m.mask.as_deref().unwrap_or(""),
                        m.value
                    )));
                }
                magic.push((m.offset, value, mask));
            }
            let mut fields = Vec::new();
            for fs in &s.fields {
                if super::KEYS.contains(&fs.name.as_str()) {
                    return Err(at(format!(
                        "field \"{}\": a name the record already has: choose another",
                        fs.name
                    )));
                }
                let big = match fs.endian.as_deref() {
                    None | Some("big") => true,
                    Some("little") => false,
                    Some(e) => {
                        return Err(at(format!("field \"{}\": endian \"{e}\": use big or little", fs.name)))
                    }
                };
                let size = match fs.kind.as_str() {
                    "u8" => 1,
                    "u16" => 2,
                    "u32" => 4,
                    "u64" => 8,
                    "string" => 0,
                    k => {
                        return Err(at(format!(
                            "field \"{}\": type \"{k}\": use u8, u16, u32, u64 or string",
                            fs.name
                        )))
                    }
                };
                fields.push(if size > 0 {
                    Field::Uint { name: fs.name.clone(), offset: fs.offset, size, big }
                } else {
                    let until = fs
                        .until
                        .as_deref()
                        .map(|u| unhex(u, "until"))
                        .transpose()
                        .map_err(|e| at(e.to_string()))?;
                    if until.is_none() && fs.len.is_none() {
                        return Err(at(format!("field \"{}\": a string needs `until` or `len`", fs.name)));
                    }
                    Field::Str {
                        name: fs.name.clone(),
                        offset: fs.offset,
                        until,
                        len: fs.len,
                        max: fs.max.unwrap_or(256).min(4096),
                    }
                });
            }
            out.push(Protocol { name: s.name.clone(), ports: s.ports.clone(), magic, fields });
        }
        Ok(Protocols(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first protocol whose magic the stream starts with (on its ports,
    /// if it names any): its name and fields. None if none matches; More
    /// (`Err(())`) if one might once more bytes come.
    pub fn identify(
        &self,
        data: &[u8],
        port: u16,
    ) -> Option<std::result::Result<(String, BTreeMap<String, serde_json::Value>), ()>> {
        let mut wanting = false;
        for p in self.0.iter().filter(|p| p.ports.is_empty() || p.ports.contains(&port)) {
            let mut matched = true;
            for (off, value, mask) in &p.magic {
                match data.get(*off..off + value.len()) {
                    Some(b) => matched &= b.iter().zip(value).zip(mask).all(|((b, v), m)| b & m == v & m),
                    None => {
                        // Whatever is there so far agrees: it may yet match.
                        let have = data.get(*off..).unwrap_or(&[]);
                        matched &= have.iter().zip(value).zip(mask).all(|((b, v), m)| b & m == v & m);
                        wanting |= matched;
                        matched = false;
                    }
                }
            }
            if !matched {
                continue;
            }
            let mut out = BTreeMap::new();
            for f in &p.fields {
                match f {
                    Field::Uint { name, offset, size, big } => {
                        let Some(b) = data.get(*offset..offset + size) else { return Some(Err(())) };
                        let mut v = 0u64;
                        for i in 0..*size {
                            let byte = if *big { b[i] } else { b[size - 1 - i] };
                            v = v << 8 | u64::from(byte);
                        }
                        out.insert(name.clone(), v.into());
                    }
                    Field::Str { name, offset, until, len, max } => {
                        let rest = data.get(*offset..).unwrap_or(&[]);
                        let end = match (until, len) {
                            (Some(d), _) => match rest.windows(d.len()).position(|w| w == d.as_slice()) {
                                Some(e) => e.min(*max),
                                None if rest.len() >= *max => *max,
                                None => return Some(Err(())),
                            },
                            (None, Some(l)) if rest.len() >= (*l).min(*max) => (*l).min(*max),
                            _ => return Some(Err(())),
                        };
                        out.insert(name.clone(), String::from_utf8_lossy(&rest[..end]).into_owned().into());
                    }
                }
            }
            return Some(Ok((p.name.clone(), out)));
        }
        wanting.then_some(Err(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MC: &str = include_str!("../../../../deploy/l7/protocols.toml");

    /// The shipped example: an inter-service protocol with magic "MC", a
    /// version byte, a message type, a big-endian u32 transaction id and a
    /// big-endian u16 length.
    #[test]
    fn the_shipped_example_reads_its_fields() {
        let p = Protocols::parse(MC, "protocols.toml").unwrap();
        let frame = [b'M', b'C', 1, 2, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x10, 0xaa];
        let Some(Ok((name, f))) = p.identify(&frame, 7000) else { panic!("no match") };
        assert_eq!(name, "mc");
        assert_eq!((f["version"].as_u64(), f["msg_type"].as_u64()), (Some(1), Some(2)));
        assert_eq!((f["txid"].as_u64(), f["length"].as_u64()), (Some(0xdeadbeef), Some(16)));
        assert_eq!(p.identify(&frame[..5], 7000), Some(Err(())), "a field cut short: more");
        assert_eq!(p.identify(b"M", 7000), Some(Err(())), "the magic so far agrees: more");
        assert_eq!(p.identify(b"GET / HTTP/1.1\r\n\r\n", 7000), None);
    }

    #[test]
    fn strings_little_endian_masks_and_errors() {
        let p = Protocols::parse(
            "[[protocol]]\nname = 'x'\nports = [9]\nmagic = [{ offset = 1, value = 'f0', mask = 'f0' }]\nfields = [\n  { name = 'n', offset = 2, type = 'u16', endian = 'little' },\n  { name = 's', offset = 4, type = 'string', until = '00' },\n]\n",
            "f",
        )
        .unwrap();
        let Some(Ok((_, f))) = p.identify(&[0, 0xf7, 0x34, 0x12, b'h', b'i', 0], 9) else { panic!() };
        assert_eq!((f["n"].as_u64(), f["s"].as_str()), (Some(0x1234), Some("hi")));
        assert_eq!(p.identify(&[0, 0xf7, 0x34, 0x12, b'h', b'i', 0], 10), None, "another port");
        for (text, want) in [
            ("[[protocol]]\nname = 'tls'\nmagic = [{ offset = 0, value = '16' }]\n", "built-in"),
            ("[[protocol]]\nname = 'y'\nmagic = []\n", "at least one magic"),
            ("[[protocol]]\nname = 'y'\nmagic = [{ offset = 0, value = 'zz' }]\n", "not hex"),
            ("[[protocol]]\nname = 'y'\nmagic = [{ offset = 0, value = '01' }]\nfields = [{ name = 'a', offset = 0, type = 'u24' }]\n", "u24"),
            ("[[protocol]]\nname = 'y'\n\nmagic = 3\n", "f:4:"),
        ] {
            let e = Protocols::parse(text, "f").err().unwrap().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
