//! `flow`: the command line of the flow orchestrator. The arguments are `flow_ui::cli`, what each
//! command does `flow_ui::commands`; this is the process around them.

use clap::Parser;
use flow_ui::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    flow_ui::context::run_process("flow", flow_ui::commands::dispatch(cli))
}
