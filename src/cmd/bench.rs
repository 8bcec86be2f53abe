//! `tcpscope bench`: runs one benchmark and prints its figures (stdout)
//! and notes (stderr).

use anyhow::Result;

use crate::bench::{self, Report};
use crate::cli::{BenchArgs, BenchWhat};
use crate::output::print_line;

struct Printed;

impl Report for Printed {
    fn line(&mut self, line: &str) -> bool {
        print_line(line)
    }

    fn note(&mut self, note: &str) {
        eprintln!("{note}");
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let out = &mut Printed;
    match args.what {
        BenchWhat::Programs => bench::programs::run(args, out),
        BenchWhat::Read => bench::read::run(args, out),
        BenchWhat::Conns => bench::conns::run(args, out),
        BenchWhat::Rules => bench::rules::run(args, out),
        BenchWhat::Agent => bench::agent::run(args, out),
        BenchWhat::L7 => bench::l7::run(args, out),
    }
}
