//! Temporary compile and run check for bench_net.rs.
#[path = "../src/bench_net.rs"]
mod bench_net;

use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: bench_net::BenchNetArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let v = rt.block_on(bench_net::run(&cli.args))?;
    eprintln!("returned: {v}");
    Ok(())
}
