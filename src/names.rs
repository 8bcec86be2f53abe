//! User-facing names of the C enums in `bpf/common_kern_user.h`: JSON
//! values, counter keys and summary words, in one place.
//!
//! Each name is the enumerator's own, its prefix dropped, lower-cased (the
//! TCP flags keep their capitals), except where the table says otherwise:
//! names users already depend on. A test walks the enums in the compiled
//! BPF objects' BTF and checks every table against them, so a table cannot
//! drift from the C order, and a new enumerator cannot go unnamed.

use crate::bpf::lifecycle::types as lc;
use crate::bpf::types;
pub use tcpscope_wire::names::{flag_names, malformed_name, FLAG_NAMES, MALFORMED_NAMES};

/// Names of `enum guard_drop_reason`, indexed by its value: counters, the
/// guard's summary and its JSON use them.
pub const GUARD_DROP_NAMES: [&str; types::guard_drop_reason::GUARD_DROP_MAX.0 as usize] = [
    "none",
    "block_rule",
    "port_rule",
    "detector",
    "tiny_fragment",
    "fragment_offset_1",
    "ipv6_ext_chain_too_long",
    "ipv6_ext_truncated",
    "ipv6_ext_unknown",
    "conn_limit",
    "l7_rule",
    "l7_undecided",
    "l7_conflict",
    "l7_out_of_order",
    "l7_table_full",
];

/// Names of `enum alert_kind` (from 1), indexed by value - 1.
const ALERT_NAMES: [&str; types::alert_kind::ALERT_KIND_MAX.0 as usize - 1] = [
    "port_scan",
    "syn_flood",
    "null_flags",
    "xmas",
    "syn_fin",
    "syn_rst",
    "fin_without_ack",
    "syn_with_data",
    "mitigation",
    "conn_limit",
    "l7_blocked",
    "l7_undecided",
    "l7_conflict",
];

/// Names of `enum l7_rule_kind` (from 1): the fields of rules files.
const L7_RULE_KIND_NAMES: [&str; types::l7_rule_kind::L7_RULE_KINDS.0 as usize - 1] =
    ["sni", "host", "http_method"];

pub fn l7_rule_kind_name(v: u32) -> &'static str {
    v.checked_sub(1).and_then(|i| L7_RULE_KIND_NAMES.get(i as usize)).copied().unwrap_or("unknown")
}

/// Names of `enum l7_undecided` (from 1).
const L7_UNDECIDED_NAMES: [&str; types::l7_undecided::L7_UNDECIDED_REASONS.0 as usize - 1] =
    ["too_large", "tls_fragmented", "timeout", "h2c"];

pub fn l7_undecided_name(v: u32) -> &'static str {
    v.checked_sub(1).and_then(|i| L7_UNDECIDED_NAMES.get(i as usize)).copied().unwrap_or("unknown")
}

/// Names of `enum conn_event_kind` (from 1), indexed by value - 1: JSON
/// `event` of `conns`.
const CONN_KIND_NAMES: [&str; lc::conn_event_kind::CONN_KIND_MAX.0 as usize - 1] = [
    "connect",
    "established_out",
    "established_in",
    "accept",
    "state",
    "close",
    "retransmit",
    "reset_received",
    "reset_sent",
    "drop",
    "zero_window",
    "window_reopen",
    "rcvqueue_full",
    "retransmit_synack",
    "conn_limit",
];

/// Names of `enum latency_kind`, indexed by its value.
const LATENCY_KIND_NAMES: [&str; lc::latency_kind::LAT_KINDS.0 as usize] = ["handshake", "connect", "rtt"];

fn from_one(table: &'static [&'static str], v: u8) -> &'static str {
    (v as usize).checked_sub(1).and_then(|i| table.get(i)).copied().unwrap_or("unknown")
}

/// Every alert kind the guard raises: the kernel's, and `syn_ratio`,
/// which user space computes.
pub fn alert_kinds() -> impl Iterator<Item = &'static str> {
    ALERT_NAMES.iter().copied().chain(["syn_ratio"])
}

/// An alert kind's name, as in JSON `alert`.
pub fn alert_name(kind: u8) -> &'static str {
    from_one(&ALERT_NAMES, kind)
}

/// A connection event kind's name, as in JSON `event`.
pub fn conn_kind_name(kind: u8) -> &'static str {
    from_one(&CONN_KIND_NAMES, kind)
}

/// A latency histogram kind's name.
pub fn latency_kind_name(kind: u8) -> &'static str {
    LATENCY_KIND_NAMES.get(kind as usize).copied().unwrap_or("unknown")
}

/// TCP states (include/net/tcp_states.h, stable UAPI numbering): a kernel
/// enum, not ours.
pub fn state_name(s: u8) -> &'static str {
    const STATES: [&str; 13] = [
        "UNKNOWN",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    STATES.get(s as usize).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use libbpf_rs::btf::types::Enum;
    use libbpf_rs::btf::Btf;
    use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
    use libbpf_rs::AsRawLibbpf as _;

    use super::*;

    /// The members of `enum name` in a BPF object's BTF: (C name, value).
    fn members(btf: &Btf<'_>, name: &str) -> Vec<(String, u32)> {
        let e: Enum<'_> = btf.type_by_name(name).unwrap_or_else(|| panic!("enum {name} in the object's BTF"));
        e.iter().map(|m| (m.name.unwrap().to_string_lossy().into_owned(), m.value as u32)).collect()
    }

    /// Every member of `enum_name` but the count at its end has the name
    /// `name_of` gives: its C name without `prefix`, in any case, unless
    /// `renamed` gives another.
    fn check(
        btf: &Btf<'_>,
        enum_name: &str,
        prefix: &str,
        renamed: &[(&str, &str)],
        name_of: impl Fn(u8) -> &'static str,
    ) {
        let all = members(btf, enum_name);
        let (last, _) = all.last().unwrap();
        assert!(
            last.ends_with("_MAX") || last.ends_with("KINDS") || last.ends_with("_REASONS"),
            "{enum_name} ends with its count: {last}"
        );
        for (c_name, value) in &all[..all.len() - 1] {
            let own = c_name.strip_prefix(prefix).unwrap_or_else(|| panic!("{c_name} starts with {prefix}"));
            let want = renamed
                .iter()
                .find(|(c, _)| c == c_name)
                .map_or(own.to_ascii_lowercase(), |(_, n)| n.to_string());
            let got = name_of(*value as u8);
            assert!(
                got.eq_ignore_ascii_case(&want),
                "{enum_name}: {c_name} = {value} is named {got:?}, not {want:?}"
            );
        }
        for (c, _) in renamed {
            assert!(all.iter().any(|(n, _)| n == c), "{enum_name}: renamed {c} is not in the enum");
        }
    }

    #[test]
    fn every_name_table_matches_the_c_enums_in_btf() {
        let mut s1 = MaybeUninit::uninit();
        let ingress = crate::bpf::IngressSkelBuilder::default().open(&mut s1).unwrap();
        let mut s2 = MaybeUninit::uninit();
        let lifecycle = crate::bpf::lifecycle::LifecycleSkelBuilder::default().open(&mut s2).unwrap();
        // SAFETY: the objects outlive the BTF views taken of them here.
        let btf_of = |o: &libbpf_rs::OpenObject| {
            Btf::from_bpf_object(unsafe { o.as_libbpf_object().as_ref() })
                .unwrap()
                .expect("BTF in the object")
        };
        let (ib, lb) = (btf_of(ingress.open_object()), btf_of(lifecycle.open_object()));
        check(&ib, "tcpscope_flag_index", "FLAG_IDX_", &[], |v| {
            FLAG_NAMES.get(v as usize).copied().unwrap_or("?")
        });
        check(&ib, "tcpscope_malformed", "MALFORMED_", &[], malformed_name);
        check(
            &ib,
            "guard_drop_reason",
            "GUARD_DROP_",
            &[
                ("GUARD_DROP_EXT_CHAIN_TOO_LONG", "ipv6_ext_chain_too_long"),
                ("GUARD_DROP_EXT_TRUNCATED", "ipv6_ext_truncated"),
                ("GUARD_DROP_EXT_UNKNOWN", "ipv6_ext_unknown"),
            ],
            |v| GUARD_DROP_NAMES.get(v as usize).copied().unwrap_or("?"),
        );
        check(
            &ib,
            "alert_kind",
            "ALERT_",
            &[("ALERT_FIN_NO_ACK", "fin_without_ack"), ("ALERT_SYN_DATA", "syn_with_data")],
            alert_name,
        );
        check(
            &lb,
            "conn_event_kind",
            "CONN_",
            &[
                ("CONN_RESET_RX", "reset_received"),
                ("CONN_RESET_TX", "reset_sent"),
                ("CONN_RCVQ_FULL", "rcvqueue_full"),
                ("CONN_LIMIT", "conn_limit"),
            ],
            conn_kind_name,
        );
        check(&lb, "latency_kind", "LAT_", &[], latency_kind_name);
        check(&ib, "l7_rule_kind", "L7_RULE_", &[("L7_RULE_METHOD", "http_method")], |v| {
            l7_rule_kind_name(v.into())
        });
        check(&ib, "l7_undecided", "L7_UNDECIDED_", &[], |v| l7_undecided_name(v.into()));
        // Unknown values are said, not hidden or mistaken for another.
        assert_eq!((l7_rule_kind_name(0), l7_undecided_name(250)), ("unknown", "unknown"));
        for f in [malformed_name, alert_name, conn_kind_name, latency_kind_name] {
            assert_eq!(f(250), "unknown");
        }
        assert_eq!(alert_name(0), "unknown");
    }
}
