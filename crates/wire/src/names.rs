//! Names of the parser's enums (bpf/common_kern_user.h): the TCP flags and
//! the malformed reasons, as JSON and summaries show them. The main crate's
//! `names` checks them, with its other tables, against the BPF objects' BTF.

use crate::types;

/// Names of the TCP flags, in the order of `flags_raw` bits 0..8, of
/// `enum tcpscope_flag_index` and of the JSON `flags` list.
pub const FLAG_NAMES: [&str; types::tcpscope_flag_index::FLAG_IDX_MAX.0 as usize] =
    ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "AE"];

/// Names of `enum tcpscope_malformed`, indexed by its value.
pub const MALFORMED_NAMES: [&str; types::tcpscope_malformed::MALFORMED_MAX.0 as usize] = [
    "none",
    "eth_truncated",
    "vlan_truncated",
    "vlan_too_deep",
    "ipv4_truncated",
    "ipv4_bad_version",
    "ipv4_bad_ihl",
    "ipv4_bad_total_len",
    "ipv6_truncated",
    "ipv6_bad_version",
    "ipv6_ext_truncated",
    "ipv6_ext_too_many",
    "tcp_truncated",
    "tcp_bad_doff",
    "tcp_hdr_truncated",
    "tcp_bad_ip_len",
    "tcp_opt_bad_len",
    "tcp_opt_overrun",
    "tcp_opt_bad_size",
    "ip_len_exceeds_frame",
];

/// A malformed reason's name; unknown values (a newer kernel object) are
/// reported rather than hidden.
pub fn malformed_name(reason: u8) -> &'static str {
    MALFORMED_NAMES.get(reason as usize).copied().unwrap_or("unknown")
}

/// The names of the flags set in `flags_raw`, in schema order.
pub fn flag_names(flags_raw: u16) -> Vec<&'static str> {
    FLAG_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags_raw & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_follow_schema_order() {
        assert_eq!(flag_names(0x1ff), FLAG_NAMES.to_vec());
        assert_eq!(flag_names(0x012), vec!["SYN", "ACK"]);
        assert!(flag_names(0).is_empty());
        // Reserved bits (0xe00) are in flags_raw but have no name.
        assert!(flag_names(0xe00).is_empty());
    }
}
