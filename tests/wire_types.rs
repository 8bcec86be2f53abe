//! The wire crate's kernel types (crates/wire/src/types.rs, checked in so
//! that it builds without clang or libbpf) are the ones the C header makes:
//! build.rs extracts them from the ingress skeleton on every build, and
//! this test compares. After a change to bpf/common_kern_user.h, run it
//! with TCPSCOPE_REGEN_WIRE=1 to rewrite the file.

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/wire/src/types.rs");

#[test]
fn wire_types_are_the_headers() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/wire_types.rs"));
    let file = std::fs::read_to_string(CHECKED_IN).unwrap();
    // The file's header: comment lines and the allow attribute, then a blank line.
    let (header, body) = file.split_once("\n\n").expect("a header, a blank line, then the types");
    assert!(header.starts_with("// @generated"), "{CHECKED_IN} keeps its header");
    if body != generated {
        if std::env::var_os("TCPSCOPE_REGEN_WIRE").is_some() {
            std::fs::write(CHECKED_IN, format!("{header}\n\n{generated}")).unwrap();
            return;
        }
        panic!(
            "{CHECKED_IN} differs from what bpf/common_kern_user.h now makes: \
             rewrite it with `TCPSCOPE_REGEN_WIRE=1 cargo test --release --test wire_types`"
        );
    }
}
