// @generated from bpf/common_kern_user.h, through the ingress skeleton, by
// build.rs (WIRE_TYPES). Do not edit: tests/wire_types.rs checks that this
// file matches the header, and rewrites it with TCPSCOPE_REGEN_WIRE=1.
#![allow(non_camel_case_types)]

#[derive(Debug, Default, Copy, Clone)]
#[repr(C)]
pub struct packet_event {
    pub ts_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub frame_len: u32,
    pub hook: u8,
    pub ip_version: u8,
    pub vlan_count: u8,
    pub ttl: u8,
    pub vlan: [u16; 2],
    pub ip_len: u16,
    pub dscp: u8,
    pub ecn: u8,
    pub ip_id: u32,
    pub ip_flags: u8,
    pub malformed: u8,
    pub hdr_len: u8,
    pub opt_present: u8,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags_raw: u16,
    pub window: u16,
    pub checksum: u16,
    pub urgent_ptr: u16,
    pub payload_len: u32,
    pub mss: u16,
    pub wscale: u8,
    pub sack_count: u8,
    pub ts_val: u32,
    pub ts_ecr: u32,
    pub sack: [[u32; 2]; 4],
    pub other_kinds: [u8; 32],
    pub cap_len: u16,
    pub mptcp_subtype: u8,
    pub tfo_cookie_len: u8,
    pub payload_off: u16,
    pub l7: u8,
    pub _pad2: u8,
}
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[repr(transparent)]
pub struct tcpscope_malformed(pub u32);
#[allow(non_upper_case_globals)]
impl tcpscope_malformed {
    pub const MALFORMED_NONE: Self = Self(0);
    pub const MALFORMED_ETH_TRUNCATED: Self = Self(1);
    pub const MALFORMED_VLAN_TRUNCATED: Self = Self(2);
    pub const MALFORMED_VLAN_TOO_DEEP: Self = Self(3);
    pub const MALFORMED_IPV4_TRUNCATED: Self = Self(4);
    pub const MALFORMED_IPV4_BAD_VERSION: Self = Self(5);
    pub const MALFORMED_IPV4_BAD_IHL: Self = Self(6);
    pub const MALFORMED_IPV4_BAD_TOTAL_LEN: Self = Self(7);
    pub const MALFORMED_IPV6_TRUNCATED: Self = Self(8);
    pub const MALFORMED_IPV6_BAD_VERSION: Self = Self(9);
    pub const MALFORMED_IPV6_EXT_TRUNCATED: Self = Self(10);
    pub const MALFORMED_IPV6_EXT_TOO_MANY: Self = Self(11);
    pub const MALFORMED_TCP_TRUNCATED: Self = Self(12);
    pub const MALFORMED_TCP_BAD_DOFF: Self = Self(13);
    pub const MALFORMED_TCP_HDR_TRUNCATED: Self = Self(14);
    pub const MALFORMED_TCP_BAD_IP_LEN: Self = Self(15);
    pub const MALFORMED_TCP_OPT_BAD_LEN: Self = Self(16);
    pub const MALFORMED_TCP_OPT_OVERRUN: Self = Self(17);
    pub const MALFORMED_TCP_OPT_BAD_SIZE: Self = Self(18);
    pub const MALFORMED_IP_LEN_EXCEEDS_FRAME: Self = Self(19);
    pub const MALFORMED_MAX: Self = Self(20);
}
impl Default for tcpscope_malformed {
    fn default() -> Self {
        Self::MALFORMED_NONE
    }
}
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[repr(transparent)]
pub struct tcpscope_hook(pub u32);
#[allow(non_upper_case_globals)]
impl tcpscope_hook {
    pub const TCPSCOPE_HOOK_XDP: Self = Self(1);
    pub const TCPSCOPE_HOOK_TC: Self = Self(2);
    pub const TCPSCOPE_HOOK_PCAP: Self = Self(3);
}
impl Default for tcpscope_hook {
    fn default() -> Self {
        Self::TCPSCOPE_HOOK_XDP
    }
}
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[repr(transparent)]
pub struct tcpscope_flag_index(pub u32);
#[allow(non_upper_case_globals)]
impl tcpscope_flag_index {
    pub const FLAG_IDX_FIN: Self = Self(0);
    pub const FLAG_IDX_SYN: Self = Self(1);
    pub const FLAG_IDX_RST: Self = Self(2);
    pub const FLAG_IDX_PSH: Self = Self(3);
    pub const FLAG_IDX_ACK: Self = Self(4);
    pub const FLAG_IDX_URG: Self = Self(5);
    pub const FLAG_IDX_ECE: Self = Self(6);
    pub const FLAG_IDX_CWR: Self = Self(7);
    pub const FLAG_IDX_AE: Self = Self(8);
    pub const FLAG_IDX_MAX: Self = Self(9);
}
impl Default for tcpscope_flag_index {
    fn default() -> Self {
        Self::FLAG_IDX_FIN
    }
}
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[repr(transparent)]
pub struct tcpscope_limits(pub u32);
#[allow(non_upper_case_globals)]
impl tcpscope_limits {
    pub const TCPSCOPE_MAX_SNAPLEN: Self = Self(1024);
    pub const TCPSCOPE_MAX_CAPTURE: Self = Self(1280);
}
impl Default for tcpscope_limits {
    fn default() -> Self {
        Self::TCPSCOPE_MAX_SNAPLEN
    }
}
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[repr(transparent)]
pub struct tcp_flag_bits(pub u32);
#[allow(non_upper_case_globals)]
impl tcp_flag_bits {
    pub const TCPF_FIN: Self = Self(1);
    pub const TCPF_SYN: Self = Self(2);
    pub const TCPF_RST: Self = Self(4);
    pub const TCPF_PSH: Self = Self(8);
    pub const TCPF_ACK: Self = Self(16);
    pub const TCPF_URG: Self = Self(32);
    pub const TCPF_ECE: Self = Self(64);
    pub const TCPF_CWR: Self = Self(128);
    pub const TCPF_AE: Self = Self(256);
}
impl Default for tcp_flag_bits {
    fn default() -> Self {
        Self::TCPF_FIN
    }
}
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[repr(transparent)]
pub struct ip_flag_bits(pub u32);
#[allow(non_upper_case_globals)]
impl ip_flag_bits {
    pub const IPF_HAS_ID: Self = Self(1);
    pub const IPF_DF: Self = Self(2);
    pub const IPF_FRAG: Self = Self(4);
    pub const IPF_JUMBO: Self = Self(8);
}
impl Default for ip_flag_bits {
    fn default() -> Self {
        Self::IPF_HAS_ID
    }
}
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[repr(transparent)]
pub struct tcp_opt_bits(pub u32);
#[allow(non_upper_case_globals)]
impl tcp_opt_bits {
    pub const OPT_MSS: Self = Self(1);
    pub const OPT_WSCALE: Self = Self(2);
    pub const OPT_SACK_PERM: Self = Self(4);
    pub const OPT_SACK: Self = Self(8);
    pub const OPT_TS: Self = Self(16);
    pub const OPT_OTHER: Self = Self(32);
    pub const OPT_MPTCP: Self = Self(64);
    pub const OPT_TFO: Self = Self(128);
}
impl Default for tcp_opt_bits {
    fn default() -> Self {
        Self::OPT_MSS
    }
}
