//! The `loadgen` command line; see the library for what it does.

use clap::Parser as _;
use loadgen::Args;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let summary = loadgen::run(&args)?;
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.to_text());
    }
    if summary.verification.is_some_and(|v| v.missing > 0) {
        std::process::exit(3);
    }
    Ok(())
}
