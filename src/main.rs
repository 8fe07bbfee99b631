//! The `kafka-delay` binary: the command line lives in the library
//! ([`kafka_delay::cli`]), so that its commands are tested like the rest.

fn main() -> std::process::ExitCode {
    kafka_delay::cli::main()
}
