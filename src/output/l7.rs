//! L7 records: one JSON object, or one tcpdump-like line, per connection.

use tcpscope_wire::l7::track::Record;
use tcpscope_wire::l7::L7;

pub fn json(r: &Record) -> String {
    serde_json::to_string(r).expect("a record always serializes")
}

/// A record as an event log line: `{"event":"l7","interface":..,` then
/// the record's own keys.
pub fn log_line(r: &Record, iface: &str) -> String {
    let record = json(r);
    format!(
        "{{\"event\":\"l7\",\"interface\":{},{}",
        serde_json::Value::from(iface),
        record.strip_prefix('{').unwrap_or(&record)
    )
}

/// The hints as another record carries them: the `l7` object's JSON, and
/// "[tls sni a.example ...]" for a text line.
pub fn attached(l: &L7) -> (Vec<u8>, String) {
    let json = serde_json::to_vec(l).expect("hints always serialize");
    (json, format!("[{} {}]", l.proto, details(l).trim_end()))
}

/// The hints' fields, as text: "sni a.example alpn h2,http/1.1 ...".
pub fn details(l: &L7) -> String {
    let q = |s: &Option<String>| s.as_deref().map(|v| format!("{v:?}"));
    let mut parts: Vec<String> = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(if k.is_empty() { v } else { format!("{k} {v}") });
        }
    };
    put("", l.method.clone());
    put("", l.path.clone());
    put("host", l.host.clone());
    put("ua", q(&l.user_agent));
    put("type", l.content_type.clone());
    put("length", l.content_length.map(|n| n.to_string()));
    put("sni", l.sni.clone());
    put("alpn", l.alpn.as_ref().map(|a| a.join(",")));
    put("versions", l.versions.as_ref().map(|a| a.join(",")));
    put("groups", l.key_share_groups.as_ref().filter(|g| !g.is_empty()).map(|a| a.join(",")));
    put("", l.pq.filter(|p| *p).map(|_| "pq".to_string()));
    put("", l.ech.filter(|e| *e).map(|_| "ech".to_string()));
    put("", l.qname.clone());
    put("type", l.qtype.map(|t| t.to_string()));
    put("", q(&l.banner));
    put("bytes", l.first_bytes.clone());
    for (k, v) in &l.fields {
        put(k, Some(v.as_str().map_or_else(|| v.to_string(), |s| format!("{s:?}"))));
    }
    put("", l.port_mismatch.then(|| "[unexpected on this port]".to_string()));
    put("", l.gave_up.map(|g| format!("(gave up: {g})")));
    parts.join(" ")
}

/// "13:05:09.123456 198.18.0.1.40000 > 198.18.0.2.443: tls sni a.example alpn h2,http/1.1 versions 1.3,1.2"
pub fn text(r: &Record) -> String {
    let ep =
        |a: std::net::IpAddr, p: u16| if a.is_ipv6() { format!("[{a}].{p}") } else { format!("{a}.{p}") };
    format!(
        "{} {} > {}: {} {}",
        super::time_of_day(r.ts_ns),
        ep(r.src, r.sport),
        ep(r.dst, r.dport),
        r.l7.proto,
        details(&r.l7)
    )
    .trim_end()
    .to_string()
}
