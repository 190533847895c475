//! `flow`: the command line of the flow orchestrator (see `flow_ui::cli`).

fn main() -> std::process::ExitCode {
    flow_ui::cli::main()
}
