use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use std::mem::MaybeUninit;
mod ingress_skel { include!(concat!(env!("OUT_DIR"), "/ingress.skel.rs")); }
fn main() {
    let mut obj = MaybeUninit::uninit();
    let mut open = ingress_skel::IngressSkelBuilder::default().open(&mut obj).unwrap();
    let r = open.maps.rodata_data.as_deref_mut().unwrap();
    r.cfg.events_enabled = 1;
    r.cfg.snaplen = 64;
    r.cfg.n_ports = 1; r.cfg.ports[0]=80;
    r.cfg.n_src = 1; r.cfg.src[0].family=4;
    match open.load() { Ok(_) => println!("loaded"), Err(e) => println!("ERR {e:#}") };
}
