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
/// Headers every program includes; a change to any rebuilds all.
const HEADERS: &[&str] = &[
    "bpf/common_kern_user.h",
    "bpf/net_defs_kern.h",
    "bpf/parse_kern.h",
    "bpf/peer_conns_kern.h",
    "bpf/ringbuf_kern.h",
    "bpf/vmlinux.h",
];

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
    println!("cargo:rerun-if-changed=build.rs");
    for h in HEADERS {
        println!("cargo:rerun-if-changed={h}");
    }
}
