//! Connection records, from the kernel's `conn_event`: the owned form
//! whose serde shape is the `conns --json` schema. The connection key and
//! addresses as users see them are the wire crate's (`model`), shared with
//! packets.

use std::net::IpAddr;

use serde::Serialize;

use crate::bpf::lifecycle::types::{self, conn_event};
pub use crate::model::{addr, conn_key, push_addr};

/// One lifecycle event, owned; its serde form is the `conns --json` schema.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRecord {
    pub ts_ns: u64,
    pub event: &'static str,
    pub conn: String,
    pub netns: u32,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub ip_version: u8,
    pub local: IpAddr,
    pub lport: u16,
    pub peer: IpAddr,
    pub pport: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The owning process's user and group (with pid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Socket state after the event; absent when no socket was involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<ConnStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnStats {
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub total_retrans: u32,
    pub srtt_us: u32,
    pub rttvar_us: u32,
    pub snd_cwnd: u32,
    pub snd_wnd: u32,
    pub rcv_wnd: u32,
}

/// Which optional keys an event of this kind carries: the one statement of
/// these rules, for `ConnRecord` and for the fast JSON writer alike.
pub mod has {
    use super::types::{conn_event, conn_event_kind as K};

    fn kind(e: &conn_event) -> u32 {
        u32::from(e.kind)
    }
    pub fn owner(e: &conn_event) -> bool {
        e.pid != 0
    }
    pub fn state(e: &conn_event) -> bool {
        e.newstate != 0
    }
    pub fn old_state(e: &conn_event) -> bool {
        kind(e) == K::CONN_STATE.0 || e.oldstate != 0
    }
    pub fn latency(e: &conn_event) -> bool {
        (kind(e) == K::CONN_ESTABLISHED_IN.0 || kind(e) == K::CONN_ESTABLISHED_OUT.0) && e.latency_ns > 0
    }
    pub fn duration(e: &conn_event) -> bool {
        kind(e) == K::CONN_CLOSE.0 && e.duration_ns > 0
    }
    pub fn stats(e: &conn_event) -> bool {
        [
            K::CONN_CLOSE.0,
            K::CONN_ESTABLISHED_IN.0,
            K::CONN_ESTABLISHED_OUT.0,
            K::CONN_RETRANSMIT.0,
            K::CONN_ZERO_WINDOW.0,
            K::CONN_WINDOW_REOPEN.0,
            K::CONN_RESET_RX.0,
            K::CONN_RCVQ_FULL.0,
        ]
        .contains(&kind(e))
    }
    pub fn reason(e: &conn_event) -> bool {
        kind(e) == K::CONN_DROP.0 || kind(e) == K::CONN_RESET_TX.0
    }
}

/// The process name, as text.
pub fn comm(e: &conn_event) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(comm_bytes(e))
}

/// The comm's bytes, up to its NUL.
pub fn comm_bytes(e: &conn_event) -> &[u8] {
    let len = e.comm.iter().position(|c| *c == 0).unwrap_or(e.comm.len());
    &e.comm[..len]
}

impl ConnRecord {
    /// `reason_name` maps a DROP or RESET_TX reason number to its kernel name.
    pub fn from_event(e: &conn_event, ts_ns: u64, reason_name: &dyn Fn(u8, u32) -> String) -> Self {
        let local = addr(e.family, &e.saddr);
        let peer = addr(e.family, &e.daddr);
        ConnRecord {
            ts_ns,
            event: crate::names::conn_kind_name(e.kind),
            conn: conn_key(e.netns, local, e.sport, peer, e.dport),
            netns: e.netns,
            cookie: e.cookie,
            cgroup_id: e.cgroup_id,
            ip_version: if local.is_ipv4() { 4 } else { 6 },
            local,
            lport: e.sport,
            peer,
            pport: e.dport,
            pid: has::owner(e).then_some(e.pid),
            comm: has::owner(e).then(|| comm(e).into_owned()),
            uid: has::owner(e).then_some(e.uid),
            gid: has::owner(e).then_some(e.gid),
            state: has::state(e).then(|| crate::names::state_name(e.newstate)),
            old_state: has::old_state(e).then(|| crate::names::state_name(e.oldstate)),
            latency_ns: has::latency(e).then_some(e.latency_ns),
            duration_ns: has::duration(e).then_some(e.duration_ns),
            stats: has::stats(e).then_some(ConnStats {
                bytes_received: e.bytes_received,
                bytes_acked: e.bytes_acked,
                segs_in: e.segs_in,
                segs_out: e.segs_out,
                total_retrans: e.total_retrans,
                srtt_us: e.srtt_us,
                rttvar_us: e.rttvar_us,
                snd_cwnd: e.snd_cwnd,
                snd_wnd: e.snd_wnd,
                rcv_wnd: e.rcv_wnd,
            }),
            reason: has::reason(e).then(|| reason_name(e.kind, e.reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_keys() {
        let k = conn_key(7, "198.18.0.2".parse().unwrap(), 8080, "198.18.0.1".parse().unwrap(), 40000);
        assert_eq!(k, "7/198.18.0.2:8080-198.18.0.1:40000");
        let k6 = conn_key(7, "2001:db8::2".parse().unwrap(), 80, "2001:db8::1".parse().unwrap(), 1);
        assert_eq!(k6, "7/[2001:db8::2]:80-[2001:db8::1]:1");
    }
}
