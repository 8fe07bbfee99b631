//! `kafka-delay-tools`: the demo and the benchmark (see the crate docs).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kafka_delay::config::LogSettings;
use kafka_delay::ops::telemetry;

/// Developer tools of kafka-delay: `make demo`, `make bench`.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local broker and the service, publish records into every
    /// tier and print their arrivals with lateness.
    Demo,
    /// Measure the service beside a raw rdkafka copy on the same (local, by
    /// default) broker: every load shape, scale-out, memory.
    Bench(kafka_delay_tools::bench::BenchArgs),
    /// The benchmark's raw rdkafka copy, as a child process (configured
    /// through KAFKA_DELAY__ environment overrides).
    #[command(hide = true)]
    RawCopy {
        #[arg(long)]
        source: String,
        #[arg(long)]
        dest: String,
        #[arg(long)]
        records: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(&LogSettings {
        filter: "warn".into(),
        ..Default::default()
    });
    let result = match cli.command {
        Command::Demo => kafka_delay_tools::demo::run().map(|_| ()),
        Command::Bench(args) => kafka_delay_tools::bench::run(&args).map(|_| ()),
        Command::RawCopy {
            source,
            dest,
            records,
        } => kafka_delay_tools::bench::raw_copy_child(&source, &dest, records),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kafka-delay-tools: {error:#}");
            ExitCode::FAILURE
        }
    }
}
