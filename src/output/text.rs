//! A connection event's line of text for `conns`, and durations for people.

use std::fmt::Write as _;

use crate::conn::ConnRecord;
use crate::output::time_of_day;

/// A connection event as one line of text.
pub fn conn_text(r: &ConnRecord) -> String {
    let mut s = format!(
        "{} {:<15} {} {}:{} <-> {}:{}",
        time_of_day(r.ts_ns),
        r.event,
        r.state.unwrap_or("-"),
        r.local,
        r.lport,
        r.peer,
        r.pport
    );
    if let (Some(pid), Some(comm)) = (r.pid, &r.comm) {
        let _ = write!(s, " pid {pid} ({comm})");
    }
    if let Some(l) = r.latency_ns {
        let _ = write!(s, " latency {}", human_ns(l));
    }
    if let Some(d) = r.duration_ns {
        let _ = write!(s, " duration {}", human_ns(d));
    }
    if let Some(st) = &r.stats {
        if r.event == "close" {
            let _ = write!(
                s,
                " rx {}B acked {}B segs in {} out {} retrans {}",
                st.bytes_received, st.bytes_acked, st.segs_in, st.segs_out, st.total_retrans
            );
        }
        let _ = write!(
            s,
            " srtt {}us cwnd {} snd_wnd {} rcv_wnd {}",
            st.srtt_us, st.snd_cwnd, st.snd_wnd, st.rcv_wnd
        );
    }
    if let Some(r) = &r.reason {
        let _ = write!(s, " reason {r}");
    }
    s
}

pub fn human_ns(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}us", n as f64 / 1e3),
        n => format!("{n}ns"),
    }
}
