//! `flow`: the command line of the flow orchestrator. The arguments are `flow_ui::cli`, what each
//! command does `flow_ui::commands`; this is the process around them.

use clap::{CommandFactory, FromArgMatches};
use flow_ui::cli::Cli;
use flow_ui::telemetry::Reporting;

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Each process kind reports as its own service: flow-scheduler, flow-worker, flow-server.
    let command = matches.subcommand_name().unwrap_or_default();
    let reporting = Reporting {
        log_format: cli.global.log_format,
        service: format!("flow-{command}"),
        // The processes that serve HTTP answer GET /metrics.
        prometheus: matches!(command, "server" | "standalone"),
    };
    flow_ui::context::run_process("flow", &reporting, flow_ui::commands::dispatch(cli))
}
