//! The interfaces an agent counts on, each with its ingress programs while
//! it is there. One that goes away is not an error on a host where
//! containers come and go: its programs are gone with it, and they are
//! attached again once an interface of that name is back, its counters
//! going on from where they were. Says what changed; never prints.

use anyhow::Result;

use crate::agent::metrics::Metrics;
use crate::cli::AttachArgs;
use crate::filter::EventFilter;
use crate::view::ingress::Session;

pub struct Interfaces {
    list: Vec<(AttachArgs, Option<Session>)>,
}

/// The ingress programs on one interface, counting only (no events).
fn attach_counting(attach: &AttachArgs) -> Result<Session> {
    Session::start(attach, EventFilter::default().to_kernel(false)?, 4096)
}

impl Interfaces {
    /// Attaches to every one of `names` (in `netns`, if given): at start
    /// each must be there, so that a typo is one clear error. Their series
    /// are declared in `metrics`.
    pub fn start(names: &[String], netns: Option<&str>, metrics: &mut Metrics) -> Result<Self> {
        let mut list = Vec::new();
        for iface in names {
            let attach = AttachArgs {
                iface: iface.clone(),
                hook: None,
                xdp_mode: None,
                btf: None,
                netns: netns.map(str::to_string),
            };
            let s = attach_counting(&attach)?;
            metrics.declare_interface(iface, s.hook.name());
            list.push((attach, Some(s)));
        }
        Ok(Interfaces { list })
    }

    /// Reads the counters of every interface that is there into `metrics`;
    /// notices those gone, and attaches again to those back. Returns one
    /// line for each such change.
    pub fn poll(&mut self, metrics: &mut Metrics) -> Vec<String> {
        let mut said = Vec::new();
        for (attach, session) in &mut self.list {
            match session {
                Some(s) => match s.presence.gone() {
                    None => {
                        if let Ok(c) = s.counters() {
                            metrics.observe_interface(&s.ifname, s.hook.name(), &c);
                        }
                    }
                    Some(why) => {
                        said.push(format!("{why}; attaching again when it is back"));
                        *session = None;
                    }
                },
                None => {
                    if let Ok(s) = attach_counting(attach) {
                        let id = s.link.id().map_or("?".into(), |i| i.to_string());
                        said.push(format!("{} is back: counting again (link id {id})", attach.iface));
                        metrics.interface_attached_again(&attach.iface);
                        *session = Some(s);
                    }
                }
            }
        }
        said
    }
}
