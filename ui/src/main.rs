//! `flow`: the command line of the flow orchestrator. The arguments are `flow_ui::cli`, what each
//! command does `flow_ui::commands`; this is the process around them.

use std::process::ExitCode;

use clap::Parser;
use flow_ui::cli::Cli;

/// The `flow` binary's whole life: parse, run the command, map its error to an exit code (2 for
/// a usage error, 1 for any other).
fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flow: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(flow_ui::commands::dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(u) = e.downcast_ref::<flow_ui::context::Usage>() {
                eprintln!("flow: {}", u.0);
                ExitCode::from(2)
            } else {
                eprintln!("flow: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}
