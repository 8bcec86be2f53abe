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
        Command::L7(a) => cmd::l7::run(a),
        Command::Conns(a) => cmd::conns::run(a),
        Command::Guard(a) => cmd::guard::run(a),
        Command::Block(a) => cmd::rules::block(a),
        Command::Allow(a) => cmd::rules::allow(a),
        Command::Latency(a) => cmd::latency::run(a),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpscope: error: {e:#}");
            // A misuse of the command line exits 2, as clap's own errors do;
            // a failure at run time exits 1.
            let usage = e
                .chain()
                .any(|c| c.is::<tcpscope::cli::UsageError>() || c.is::<tcpscope::filter::FilterError>());
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
