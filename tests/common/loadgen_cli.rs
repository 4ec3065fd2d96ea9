//! The `loadgen` command line, built up by the tests that drive load with
//! the load generator's library (its `--verify` checks Kafka afterwards).

use clap::Parser as _;

use super::KEY;

/// `loadgen --target TARGET`, the arguments added, and `--key KEY` (the
/// test key) unless a `--key` was added.
#[derive(Debug, Clone)]
pub struct Loadgen {
    argv: Vec<String>,
}

impl Loadgen {
    pub fn new(target: impl ToString) -> Loadgen {
        Loadgen {
            argv: vec!["loadgen".into(), "--target".into(), target.to_string()],
        }
    }

    /// Adds `args`, as they are.
    pub fn args(mut self, args: &[&str]) -> Loadgen {
        self.argv.extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    /// `--verify BROKERS --verify-idle-timeout SECONDS`: afterwards, every
    /// acknowledged event is looked for in Kafka.
    pub fn verify(self, brokers: &str, idle_timeout_s: u32) -> Loadgen {
        self.args(&[
            "--verify",
            brokers,
            "--verify-idle-timeout",
            &idle_timeout_s.to_string(),
        ])
    }

    pub fn parse(&self) -> loadgen::Args {
        let mut argv = self.argv.clone();
        if !argv.iter().any(|arg| arg == "--key") {
            argv.extend(["--key".into(), KEY.into()]);
        }
        loadgen::Args::parse_from(argv)
    }

    /// Runs the load to its end; panics when loadgen fails.
    pub fn run(&self) -> loadgen::Summary {
        loadgen::run(&self.parse()).expect("loadgen ran")
    }
}
