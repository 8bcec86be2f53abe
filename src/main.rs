//! tcpscope binary: parse the command line, run one command, report errors
//! as one line.

use std::process::ExitCode;

use clap::Parser;
use tcpscope::cli::{Cli, Command};
use tcpscope::{bpf, cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    bpf::init_libbpf_logging();
    let result = match &cli.command {
        Command::Watch(a) => cmd::watch::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Read(a) => cmd::read::run(a),
        Command::Conns(a) => cmd::conns::run(a),
        Command::Guard(a) => cmd::guard::run(a),
        Command::Block(a) => cmd::guard::block(a),
        Command::Allow(a) => cmd::guard::allow(a),
        Command::Latency(a) => cmd::latency::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
