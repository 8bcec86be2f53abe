//! Compiles the kernel programs in `bpf/` and generates their Rust skeletons.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// One skeleton per hook family: (source, skeleton module file, extra clang
/// arguments). The lifecycle programs take a position with an atomic add
/// whose old value they use (BPF_FETCH): BPF v3 instructions (Linux 5.12+).
const PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("bpf/ingress.bpf.c", "ingress.skel.rs", &[]),
    ("bpf/baseline.bpf.c", "baseline.skel.rs", &[]),
    ("bpf/lifecycle.bpf.c", "lifecycle.skel.rs", &["-mcpu=v3"]),
];

/// The shared types the wire crate (crates/wire, no BPF) needs, taken from
/// the ingress skeleton: its checked-in `src/generated.rs` must equal what
/// this writes to OUT_DIR/wire_types.rs (tests/wire_types.rs checks).
const WIRE_TYPES: &[&str] = &[
    "packet_event",
    "tcpscope_malformed",
    "tcpscope_hook",
    "tcpscope_limits",
    "tcpscope_flag_index",
    "tcp_flag_bits",
    "ip_flag_bits",
    "tcp_opt_bits",
];

/// The name an item of a skeleton's `types` module defines or implements.
fn item_name(item: &[&str]) -> Option<String> {
    item.iter().find_map(|l| {
        let t = l.trim_start();
        let rest = t
            .strip_prefix("pub struct ")
            .or_else(|| t.strip_prefix("impl Default for "))
            .or_else(|| t.strip_prefix("impl "))?;
        Some(rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next()?.to_string())
    })
}

/// The items of `skel`'s `types` module named in `wanted`, in their order
/// there, at column 0.
fn wire_types(skel: &str, wanted: &[&str]) -> String {
    let start = skel.find("\n    pub mod types {\n").expect("a types module in the skeleton");
    let mut out = String::new();
    let mut item: Vec<&str> = Vec::new();
    for line in skel[start + 1..].lines().skip(1) {
        if line == "    }" {
            break; // the end of the types module
        }
        item.push(line);
        let t = line.strip_prefix("        ").unwrap_or(line);
        let top = !t.starts_with(' ') && !t.starts_with('#');
        if top && (t == "}" || t.ends_with(';') || t.ends_with("{}")) {
            if item_name(&item).is_some_and(|n| wanted.contains(&n.as_str())) {
                for l in &item {
                    out.push_str(l.strip_prefix("        ").unwrap_or(l));
                    out.push('\n');
                }
            }
            item.clear();
        }
    }
    out
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR must be set by cargo"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let include = manifest.join("bpf");
    // x86_64 only, tested: the per-CPU event slots of `conns` are written
    // by the kernel (the event, then its seq, with a compiler barrier) and
    // read by user space (seq with Acquire, then the event), which is sound
    // where stores are not reordered with stores (x86's TSO). A weaker
    // architecture (arm64) needs a store-release in the program, which
    // needs BPF's load-acquire/store-release instructions (Linux 6.15+);
    // until that is written and tested there, refuse to build rather than
    // lose or garble events. vmlinux.h is x86_64's, too.
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") | Err(_) => "x86",
        Ok(other) => panic!(
            "tcpscope is built and tested for x86_64 only; {other} is refused: the event slots of `conns` rely on x86's store order (see build.rs), and bpf/vmlinux.h is x86_64's"
        ),
    };

    for (src, skel, extra) in PROGRAMS {
        SkeletonBuilder::new()
            .source(manifest.join(src))
            .clang_args(
                [
                    format!("-I{}", include.display()),
                    format!("-D__TARGET_ARCH_{arch}"),
                    "-Wall".to_string(),
                    "-Wno-unused-function".to_string(),
                ]
                .into_iter()
                .chain(extra.iter().map(|a| a.to_string())),
            )
            .build_and_generate(out.join(skel))
            .unwrap_or_else(|e| panic!("building {src} failed: {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
    let skel = std::fs::read_to_string(out.join("ingress.skel.rs")).expect("the ingress skeleton");
    std::fs::write(out.join("wire_types.rs"), wire_types(&skel, WIRE_TYPES)).expect("writing wire_types.rs");
    println!("cargo:rerun-if-changed=build.rs");
    // Every header under bpf/, a new one too (a directory is watched whole).
    println!("cargo:rerun-if-changed=bpf");
}
