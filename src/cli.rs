//! Command-line interface. Parsing only: the commands live in [`crate::cmd`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::bpf::attach::{HookKind, XdpMode};
use crate::bpf::lifecycle::AcceptVia;
use crate::filter::{Cidr, EventFilter, FlagMatch};

const ABOUT: &str = "eBPF inspector of incoming TCP traffic: sees every TCP packet at the \
interface's ingress hook, decodes it in the kernel, and streams what you ask for.";

const HOOK_HELP: &str = "Ingress hook [default: tc]. \
tc (tcx ingress) is the default because it works on every interface without changing it: \
native XDP on veth, for example, makes the device run NAPI without GRO and costs throughput, and \
generic XDP is slower than tc. tc sees packets after GRO, so on a NIC with GRO on, one event may \
stand for several wire segments. xdp sees each frame as the driver received it, before GRO and \
before any other hook: use it for per-segment fidelity or on NICs with native XDP support.";

#[derive(Debug, Parser)]
#[command(name = "tcpscope", version, about = ABOUT, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream incoming TCP packets from an interface, one line (or JSON object) each.
    #[command(after_help = "Examples:\n  \
        tcpscope watch -i eth0 --port 443 --flags SYN,!ACK     # new connections to :443\n  \
        tcpscope watch -i eth0 --src 2001:db8::/32 --json -c 100\n  \
        tcpscope watch -i eth0 --hook xdp --sample 100         # 1% of packets, at XDP\n  \
        tcpscope watch -i eth0 --port 80 --snaplen 64          # with 64 payload bytes")]
    Watch(WatchArgs),
    /// Decode a pcap or pcapng capture offline (no privileges needed).
    #[command(after_help = "Examples:\n  \
        tcpscope read capture.pcapng --json\n  \
        tcpdump -w - -i eth0 tcp | tcpscope read - --port 443")]
    Read(ReadArgs),
    /// Name what each incoming connection speaks (HTTP, TLS, DNS, SSH, h2c,
    /// custom protocols) from its client's first bytes, live or from a capture.
    #[command(after_help = "Examples:\n  \
        tcpscope l7 -i eth0 --port 443,80\n  \
        tcpscope l7 -r capture.pcapng --json\n  \
        tcpscope l7 -i eth0 --protocols deploy/l7/protocols.toml")]
    L7(L7Args),
    /// Print the kernel's packet counters and rates every interval.
    #[command(after_help = "Example:\n  tcpscope stats -i eth0 --interval 1")]
    Stats(StatsArgs),
    /// Follow TCP connections in the kernel: connect, accept, established, close,
    /// retransmits, resets, drops with reason, zero windows (all network namespaces).
    #[command(after_help = "Examples:\n  \
        tcpscope conns --port 443\n  \
        tcpscope conns --pid 1234 --json")]
    Conns(ConnsArgs),
    /// Handshake, connect and RTT latency histograms per port, with percentiles.
    Latency(LatencyArgs),
    /// Protect an interface: drop what the allow/block/port rules and the
    /// detectors say, in the kernel (at XDP unless --hook tc); rules change at
    /// runtime with `tcpscope block` and `allow`.
    #[command(after_help = "Example:\n  tcpscope guard -i eth0 --rules rules.toml\n\n\
        Rules file (TOML):\n  [[block]]\n  cidr = \"198.18.0.0/24\"\n  port = 22      # optional: only this destination port\n  \
        ttl = \"10m\"    # optional\n  [[block]]\n  sni = \"*.example.com\"  # or host = ..., http_method = ...: L7 rules\n  \
        [[allow]]\n  cidr = \"198.18.1.5\"   # never blocked")]
    Guard(GuardArgs),
    /// Add, remove, list, flush or save the block rules of the running agent or guard (live, no reload).
    Block(BlockArgs),
    /// Add, remove, list or flush the allow rules of the running agent or guard.
    Allow(AllowArgs),
    /// Run as a service: count (or guard) every interface's packets and follow
    /// every connection; Prometheus metrics (http://127.0.0.1:9917/metrics), a
    /// control API for rules, NDJSON event logs (docs/agent.md).
    #[command(after_help = "Examples:\n  \
        tcpscope agent -i eth0 -i 'veth*'\n  \
        tcpscope agent --guard -i eth0 --top-sources 10\n  \
        tcpscope agent --config /etc/tcpscope/agent.toml --check")]
    Agent(AgentArgs),
    /// Benchmarks: programs (ns/packet), read (vs tcpdump), conns (overhead), rules (vs xdp-filter), agent, l7.
    Bench(BenchArgs),
    /// Build two test hosts (netns + veth), watch real connections and their sockets, clean up.
    Demo(DemoArgs),
}

/// Where and how to attach.
#[derive(Debug, Args, Clone)]
pub struct AttachArgs {
    /// Interface to attach to (its incoming traffic only).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub iface: String,
    #[arg(long, value_enum, help = HOOK_HELP)]
    pub hook: Option<HookKind>,
    /// XDP attach mode, with --hook xdp (or guard's default hook) [default: native].
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// BTF file to use instead of /sys/kernel/btf/vmlinux (kernels without CONFIG_DEBUG_INFO_BTF).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Network namespace of the interface (a name from `ip netns`), like `ip -n`.
    /// Unlike `ip netns exec`, this keeps tcpscope in the host's mount namespace,
    /// where `guard` pins its maps for `tcpscope block` to find.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

impl AttachArgs {
    pub fn hook(&self) -> HookKind {
        self.hook.unwrap_or(HookKind::Tc)
    }
}

/// Which packets become events; applied in the kernel.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Source or destination port (repeat or comma-separate, up to 8).
    #[arg(long = "port", value_name = "P", value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// Source port (up to 8).
    #[arg(long = "sport", value_name = "P", value_delimiter = ',')]
    pub sports: Vec<u16>,
    /// Destination port (up to 8).
    #[arg(long = "dport", value_name = "P", value_delimiter = ',')]
    pub dports: Vec<u16>,
    /// Source address prefix, IPv4 or IPv6 (repeat for several, up to 8).
    #[arg(long = "src", value_name = "CIDR")]
    pub src: Vec<Cidr>,
    /// Destination address prefix, IPv4 or IPv6 (up to 8).
    #[arg(long = "dst", value_name = "CIDR")]
    pub dst: Vec<Cidr>,
    /// Flags that must be set; prefix with ! for flags that must be clear: SYN,!ACK.
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    pub flags: Option<FlagMatch>,
    /// Keep 1 in N matching packets.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: Option<u32>,
    /// Copy up to N payload bytes per packet (default 0: headers only; max 1024).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub snaplen: u32,
}

impl FilterArgs {
    pub fn to_filter(&self) -> EventFilter {
        EventFilter {
            ports: self.ports.clone(),
            sports: self.sports.clone(),
            dports: self.dports.clone(),
            src: self.src.clone(),
            dst: self.dst.clone(),
            flags: self.flags.unwrap_or_default(),
            sample_every: self.sample.unwrap_or(1),
            snaplen: self.snaplen,
            copy_headers: false,
        }
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Exit after COUNT packets.
    #[arg(short = 'c', long = "count", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Print NDJSON, one object per packet (schema: docs/json-schema.md).
    #[arg(long)]
    pub json: bool,
    /// Write the packets to FILE as pcapng instead of printing them: headers,
    /// plus --snaplen payload bytes, each with its original length.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<std::path::PathBuf>,
    /// With -w, print the packets too.
    #[arg(long, requires = "write")]
    pub print: bool,
    /// Ring buffer size in MiB (power of two).
    #[arg(long, value_name = "MIB", default_value_t = 4)]
    pub ringbuf_mib: u32,
    /// Name each connection's protocol from its client's first bytes (L7
    /// hints: HTTP, TLS, DNS, SSH, h2c), and give its packets an `l7` object
    /// (JSON) or its hints (text) once named.
    #[arg(long)]
    pub l7: bool,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Capture file (pcap or pcapng), or - for standard input.
    #[arg(value_name = "FILE")]
    pub file: String,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after COUNT packets printed.
    #[arg(short = 'c', long = "count", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Print NDJSON, one object per packet (schema: docs/json-schema.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct L7Args {
    /// Capture file (pcap or pcapng), or - for standard input.
    #[arg(short = 'r', long = "read", value_name = "FILE", conflicts_with = "iface")]
    pub file: Option<String>,
    /// Live: the interface whose incoming connections to name.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub iface: Option<String>,
    #[arg(long, value_enum, help = HOOK_HELP, requires = "iface")]
    pub hook: Option<HookKind>,
    /// XDP attach mode, with --hook xdp [default: native].
    #[arg(long, value_enum, requires = "iface")]
    pub xdp_mode: Option<XdpMode>,
    /// Live: network namespace of the interface (a name from `ip netns`).
    #[arg(long, value_name = "NAME", requires = "iface")]
    pub netns: Option<String>,
    /// Only connections to these server ports (up to 8 live).
    #[arg(long = "port", value_name = "P", value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// One JSON object per connection (schema: docs/l7-schema.md).
    #[arg(long)]
    pub json: bool,
    /// Exit after COUNT connections.
    #[arg(short = 'c', long = "count", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Custom protocols (TOML; deploy/l7/protocols.toml is an example),
    /// tried before the built-in ones.
    #[arg(long, value_name = "FILE")]
    pub protocols: Option<PathBuf>,
    /// Live: ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 4, requires = "iface")]
    pub ringbuf_mib: u32,
}

impl L7Args {
    /// Where to attach, live.
    pub fn attach(&self) -> Option<AttachArgs> {
        Some(AttachArgs {
            iface: self.iface.clone()?,
            hook: self.hook,
            xdp_mode: self.xdp_mode,
            btf: None,
            netns: self.netns.clone(),
        })
    }
}

const GUARD_HOOK_HELP: &str = "Ingress hook [default: xdp]. \
The guard drops at XDP by default: before an skb exists, the cheapest place to drop. \
tc (tcx ingress, TC_ACT_SHOT) works on every interface and goes at the head of the tcx chain.";

#[derive(Debug, Args, Clone)]
#[command(mut_arg("hook", |a| a.help(GUARD_HOOK_HELP)))]
pub struct GuardArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// The agent's: L7 hints on the guarded interface too (with --inspect).
    #[arg(skip)]
    pub l7: bool,
    /// Rules to load at start (TOML; see the example below).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Keep the full inspector's counters (every flag, malformed options) for
    /// packets that pass; by default the guard decides and stops.
    #[arg(long)]
    pub inspect: bool,
    /// Turn the detectors off (port scan, SYN flood, flag anomalies). The
    /// rules, and the drops that keep fragments from dodging them, stay on.
    #[arg(long)]
    pub no_detect: bool,
    /// IPv6 packets whose extension headers the guard cannot follow to the
    /// transport header (more than 8, one cut short, or AH, Mobility, HIP,
    /// Shim6, experimental): drop them (RFC 7112, RFC 9098), or pass them
    /// unchecked. Tiny and overlapping fragments are always dropped.
    #[arg(long, value_name = "WHAT", default_value = "drop")]
    pub unparsable: Unparsable,
    /// While L7 rules (--sni, --host, --http-method) exist: what to do with
    /// a connection whose first message cannot be read (over 4 KiB, a
    /// ClientHello over several TLS records, h2c, or nothing complete within
    /// --l7-timeout). Drop: no rule can be dodged that way.
    #[arg(long, value_name = "WHAT", default_value = "drop")]
    pub l7_undecided: Unparsable,
    /// While L7 rules exist: how long a connection may take to complete its
    /// first message.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::policy::parse_duration)]
    pub l7_timeout: std::time::Duration,
    /// Block a source that crosses the port-scan or SYN-flood threshold, for --mitigate-ttl.
    #[arg(long)]
    pub mitigate: bool,
    /// How long mitigation blocks a source.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::policy::parse_duration)]
    pub mitigate_ttl: std::time::Duration,
    /// Port scan: distinct destination ports (of packets without ACK) from one source...
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub scan_ports: u32,
    /// ...within this window.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::policy::parse_duration)]
    pub scan_window: std::time::Duration,
    /// SYN flood: SYNs per second one source (IPv6: one /64) may send...
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub syn_rate: u32,
    /// ...with bursts up to this many.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub syn_burst: u32,
    /// Connection limit: established incoming connections one source may hold (0: off).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub conn_limit: u32,
    /// Enforce --conn-limit: drop new SYNs from a source that holds that
    /// many established connections, until it holds fewer (--mitigate
    /// implies it). Without it the limit only alerts.
    #[arg(long)]
    pub enforce: bool,
    /// SYN-to-handshake ratio: alert when fewer than this share of incoming SYNs...
    #[arg(long, value_name = "RATIO", default_value_t = 0.1)]
    pub syn_ratio: f64,
    /// ...completes a handshake, over a second with at least this many SYNs.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub syn_ratio_min: u64,
    /// At most one alert per source and kind per this interval.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::policy::parse_duration)]
    pub alert_interval: std::time::Duration,
    /// Print alerts as NDJSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's top sources: count packets and SYNs per source (not a
    /// `guard` option; the agent sets it).
    #[arg(skip)]
    pub top_sources: bool,
}

/// A misuse of the command line found after parsing (a contradiction, a
/// value out of range): exits 2, as clap's own usage errors do; failures
/// at run time exit 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// As `anyhow::ensure!`, failing with a [`UsageError`] (exit 2).
#[macro_export]
macro_rules! ensure_usage {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::cli::UsageError(format!($($arg)+)).into());
        }
    };
}

/// What the guard does with a packet it cannot follow to its TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Unparsable {
    /// Drop it, and count it by reason.
    Drop,
    /// Pass it without checking the rules (as observers do).
    Pass,
}

/// Which running guard `block` and `allow` talk to.
#[derive(Debug, Args)]
pub struct GuardSelect {
    /// The guarded interface (default: the only running guard).
    #[arg(short = 'i', long = "interface", value_name = "IFACE", global = true)]
    pub iface: Option<String>,
    /// The guarded interface's network namespace, as given to `guard --netns`.
    #[arg(long, value_name = "NAME", global = true, requires = "iface")]
    pub netns: Option<String>,
    /// The control socket of a running agent. When an agent answers there,
    /// the rules go through it: without -i, to every interface it guards.
    #[arg(long, value_name = "SOCKET", global = true, default_value = crate::agent::control::SOCKET)]
    pub agent: PathBuf,
}

impl GuardSelect {
    /// The guard's id (see `policy::guard_id`), if an interface was named.
    pub fn id(&self) -> Option<String> {
        self.iface.as_deref().map(|i| crate::policy::guard_id(i, self.netns.as_deref()))
    }
}

#[derive(Debug, Args)]
pub struct BlockArgs {
    #[command(flatten)]
    pub guard: GuardSelect,
    #[command(subcommand)]
    pub cmd: BlockCmd,
}

#[derive(Debug, Subcommand)]
pub enum BlockCmd {
    /// Drop packets from each CIDR (to port P only, with --port); or drop
    /// connections whose first message names a host or method (--sni,
    /// --host, --http-method).
    Add {
        /// One or more CIDRs, or - to read one per line from standard input
        /// (blank lines and # comments skipped); written in batches.
        #[arg(value_name = "CIDR", required_unless_present_any = ["sni", "host", "http_method"])]
        cidrs: Vec<String>,
        /// Only packets to this destination port (CIDR rules).
        #[arg(long, value_name = "P")]
        port: Option<u16>,
        #[command(flatten)]
        names: NameArgs,
        /// Remove the rule after this long: 500ms, 30s, 10m, 2h.
        #[arg(long, value_name = "DURATION", value_parser = crate::policy::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// A note kept with the rule (by a running agent; a guard keeps none).
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Remove a block rule: give its CIDR (and port), or its name.
    Del {
        #[arg(required_unless_present_any = ["sni", "host", "http_method"])]
        cidr: Option<Cidr>,
        #[arg(long, value_name = "P")]
        port: Option<u16>,
        #[command(flatten)]
        names: NameArgs,
    },
    /// List the rules with their hit counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove every block rule (port rules included).
    Flush,
    /// Write every rule, allow rules too, as a rules file (with each rule's
    /// remaining TTL) that `guard --rules` takes; - for standard output.
    Save {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Block rules on what a connection's first message names (L7 rules). The
/// guard drops the segment that completes a matching first message and
/// every later packet of its connection, whatever the source or port.
#[derive(Debug, Args, Default)]
pub struct NameArgs {
    /// A TLS ClientHello's server name (SNI): a.example.com, or
    /// '*.example.com' for every name under example.com. Repeatable.
    #[arg(long, value_name = "NAME", conflicts_with = "cidrs")]
    pub sni: Vec<String>,
    /// An HTTP/1 request's Host (or absolute-form target's host), as --sni.
    /// Repeatable.
    #[arg(long, value_name = "NAME", conflicts_with = "cidrs")]
    pub host: Vec<String>,
    /// An HTTP/1 request method: CONNECT, TRACE, ... (any case). Repeatable.
    #[arg(long = "http-method", value_name = "METHOD", conflicts_with = "cidrs")]
    pub http_method: Vec<String>,
}

impl NameArgs {
    /// The rules named, each checked (one line for a bad one).
    pub fn rules(&self, ttl: Option<std::time::Duration>) -> Result<Vec<crate::policy::Rule>, String> {
        use crate::policy::{NameKind, NameRule, Rule};
        [(NameKind::Sni, &self.sni), (NameKind::Host, &self.host), (NameKind::HttpMethod, &self.http_method)]
            .into_iter()
            .flat_map(|(k, names)| names.iter().map(move |n| (k, n)))
            .map(|(k, n)| NameRule::parse(k, n).map(|n| Rule::on_name(n, ttl)))
            .collect()
    }
}

#[derive(Debug, Args)]
pub struct AllowArgs {
    #[command(flatten)]
    pub guard: GuardSelect,
    #[command(subcommand)]
    pub cmd: AllowCmd,
}

#[derive(Debug, Subcommand)]
pub enum AllowCmd {
    /// Never block packets from each CIDR.
    Add {
        /// One or more CIDRs, or - to read one per line from standard input.
        #[arg(value_name = "CIDR", required = true)]
        cidrs: Vec<String>,
        /// Remove the rule after this long: 500ms, 30s, 10m, 2h.
        #[arg(long, value_name = "DURATION", value_parser = crate::policy::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// A note kept with the rule (by a running agent; a guard keeps none).
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Remove an allow rule.
    Del { cidr: Cidr },
    /// List the rules with their hit counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove every allow rule.
    Flush,
}

#[derive(Debug, Args)]
pub struct ConnsArgs {
    /// Only connections with one of these local or remote ports (repeat or
    /// comma-separate, up to 8).
    #[arg(long = "port", value_name = "P", value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// Only sockets of this process (known from connect() or accept()).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Also report every TCP state change.
    #[arg(long)]
    pub states: bool,
    /// Exit after COUNT events.
    #[arg(short = 'c', long = "count", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Print NDJSON, one object per event.
    #[arg(long)]
    pub json: bool,
    /// Where the process of an accepted connection comes from.
    #[arg(long, value_enum, value_name = "HOOK", default_value = "cgroup")]
    pub accept_via: AcceptVia,
    /// Name the protocol of incoming connections on IFACE from their first
    /// bytes (L7 hints), and give their later events an `l7` object (JSON)
    /// or their hints (text).
    #[arg(long, value_name = "IFACE")]
    pub l7: Option<String>,
    /// The network namespace of the --l7 interface (a name from `ip netns`).
    #[arg(long, value_name = "NAME", requires = "l7")]
    pub l7_netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Only this port.
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Seconds between reports.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub interval: f64,
    /// Exit after COUNT reports.
    #[arg(short = 'c', long = "count", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Print each report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Each report covers only its interval, not everything since the
    /// start (max is then the upper bound of the highest bucket used).
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Seconds between reports.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub interval: f64,
    /// Exit after COUNT reports.
    #[arg(short = 'c', long = "count", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Print each report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's configuration (TOML; see docs/agent.md). The options
    /// below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interfaces to follow: a name, a glob (veth*, eth?) or all (every one
    /// but lo); repeat for more. Those a glob matches are attached as they
    /// appear.
    #[arg(short = 'i', long = "interface", value_name = "IFACE|GLOB")]
    pub ifaces: Vec<String>,
    /// Network namespace of the interfaces (a name from `ip netns`, or a path).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Where to serve /metrics [default: 127.0.0.1:9917] (keep it on
    /// loopback unless a firewall guards it).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Seconds between reads of the kernel's counters [default: 1].
    #[arg(long, value_name = "S")]
    pub interval: Option<f64>,
    /// Guard every interface followed, with its detectors (settings in the
    /// config's [guard] table).
    #[arg(long)]
    pub guard: bool,
    /// Where the agent keeps its rules [default: /var/lib/tcpscope].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The control API's Unix socket (root-only) [default: /run/tcpscope/agent.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Also serve the control API on TCP, at this address; beyond loopback
    /// only with --control-token-file.
    #[arg(long, value_name = "ADDR")]
    pub control_listen: Option<String>,
    /// The bearer token the TCP control API asks for (a file only root can read).
    #[arg(long, value_name = "FILE")]
    pub control_token_file: Option<PathBuf>,
    /// Events to log as NDJSON, comma-separated: connections, retransmits,
    /// resets, drops, windows, alerts, rules, l7 [default: alerts,rules].
    #[arg(long, value_name = "KINDS")]
    pub log_events: Option<String>,
    /// Log the events to this file (rotated by size) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Export the K sources with the most packets and the most SYNs over
    /// each window (counted in the kernel in fixed memory), with an "other" row.
    #[arg(long, value_name = "K")]
    pub top_sources: Option<usize>,
    /// Who owns each socket (uid, gid, cgroup, systemd unit, container,
    /// pod) on logged connection events, and a capped `workload` label.
    #[arg(long)]
    pub workload: bool,
    /// Name each incoming connection's protocol from its first bytes (L7
    /// hints: HTTP, TLS, DNS, SSH, h2c), counted by protocol and port.
    #[arg(long)]
    pub l7: bool,
    /// Check the configuration (file and options) and exit: 0 and a summary
    /// if it is good, else the error with its line.
    #[arg(long)]
    pub check: bool,
    /// Export the BPF programs' run time and run count (the kernel's
    /// BPF_ENABLE_STATS, on while the agent runs; costs a few ns per run).
    #[arg(long)]
    pub bpf_stats: bool,
}

/// What `bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    /// ns/packet of the XDP and TC programs (BPF_PROG_TEST_RUN) next to empty programs.
    Programs,
    /// `tcpscope read --json` next to `tcpdump -nn -v -r` on a capture it makes (packets/s, peak RSS).
    Read,
    /// Connections/s of a short-connection loop between test hosts, with and without `conns` running.
    Conns,
    /// Guard rule lookup with 0..100,000 rules, next to xdp-tools' xdp-filter.
    Rules,
    /// The agent: the connection loop with and without it, its CPU and RSS, and one scrape's time.
    Agent,
    /// L7 hints and L7 guard rules: ns/packet in the kernel, ns/connection in user space, bulk and
    /// short-connection loops end to end, `l7 -r` against tshark.
    L7,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum, default_value = "programs")]
    pub what: BenchWhat,
    /// BPF_PROG_TEST_RUN repetitions per measurement (programs).
    #[arg(long, default_value_t = 2_000_000)]
    pub repeat: u32,
    /// Measurements per case; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Packets in the capture that `bench read` makes; `bench l7` writes
    /// one of PACKETS/10 TLS connections (3 packets each).
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// Capture for `bench read`: used if it exists, else made there and kept.
    #[arg(long, value_name = "FILE")]
    pub capture: Option<std::path::PathBuf>,
    /// `bench conns`: run the client and the server on CPU N (steadier figures, and every cost of
    /// tracing in the kernel lands on the loop's one CPU), or the client on N and the server on M
    /// (each packet is then handled on its sender's CPU: a socket's cache lines move between the
    /// two).
    #[arg(long, value_name = "N[,M]", value_delimiter = ',')]
    pub cpu: Vec<usize>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, value_enum, help = HOOK_HELP)]
    pub hook: Option<HookKind>,
    /// Connections to make per address family.
    #[arg(long, default_value_t = 2)]
    pub connections: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn watch_parses_filters() {
        let cli = Cli::try_parse_from([
            "tcpscope",
            "watch",
            "-i",
            "eth0",
            "--port",
            "80,443",
            "--src",
            "198.18.0.0/15",
            "--flags",
            "SYN,!ACK",
            "--sample",
            "10",
            "--json",
            "-c",
            "5",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else { panic!("not watch") };
        let f = w.filter.to_filter();
        assert_eq!(f.ports, vec![80, 443]);
        assert_eq!(f.flags.set, 0x002);
        assert_eq!(f.flags.clear, 0x010);
        assert_eq!(f.sample_every, 10);
        assert_eq!(w.count, Some(5));
        assert_eq!(w.attach.hook(), HookKind::Tc);
    }

    #[test]
    fn bad_values_are_rejected_with_the_reason() {
        let err = Cli::try_parse_from(["tcpscope", "watch", "-i", "x", "--src", "10.0.0.0/40"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefix 40"), "{err}");
        assert!(Cli::try_parse_from(["tcpscope", "watch", "-i", "x", "--sample", "0"]).is_err());
        assert!(Cli::try_parse_from(["tcpscope", "watch", "-i", "x", "--port", "70000"]).is_err());
    }
}
