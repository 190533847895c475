//! The `flow` command line's arguments: the product's commands only (the benchmarks are the
//! `flow-bench` binary). What each command does is `crate::commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "flow",
    version,
    about = "Workflow orchestration for ML data teams",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Home folder (embedded database, logs)
    #[arg(long, env = "FLOW_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// DAGs folder
    #[arg(long, env = "FLOW_DAGS_FOLDER", global = true)]
    pub dags: Option<PathBuf>,
    /// Metadata database (sqlite://PATH or postgres://USER@HOST:PORT/DB)
    #[arg(long, env = "FLOW_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Web server address
    #[arg(long, env = "FLOW_BIND", global = true)]
    pub bind: Option<String>,
    /// How log lines on stderr look: text for people, json (one object per line, with trace
    /// and span ids) for log shippers
    #[arg(
        long,
        env = "FLOW_LOG_FORMAT",
        global = true,
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
}

/// See [`Global::log_format`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate, list, pause and unpause DAGs
    Dags {
        #[command(subcommand)]
        command: DagsCommand,
    },
    /// Run one DAG run in this process, to the end (no daemon needed)
    Run(RunArgs),
    /// Create a queued run for the scheduler daemon
    Trigger {
        #[command(flatten)]
        run: RunArgs,
        /// Follow the run until it ends
        #[arg(long)]
        wait: bool,
    },
    /// Create the scheduled runs whose logical dates fall in [FROM, TO]
    Backfill(BackfillArgs),
    /// List and show runs
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Task logs and clears
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// API tokens
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The model registry: trained versions, their metrics and stages
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// A/B experiments the `experiment` operator keeps records of: state, decision, looks
    Experiments {
        #[command(subcommand)]
        command: ExperimentsCommand,
    },
    /// The scheduler daemon: creates due runs and runs tasks until SIGINT/SIGTERM
    Scheduler {
        /// Plan and create runs, but run no task: `flow worker` processes run them
        #[arg(long)]
        no_tasks: bool,
        /// Run only the tasks of these queues (repeat or separate with commas; by default,
        /// every queue)
        #[arg(long = "queue", value_name = "NAME", value_delimiter = ',')]
        queues: Vec<String>,
    },
    /// A worker: claims queued tries from the database and runs them until SIGINT/SIGTERM (on
    /// any host; the schedulers plan the runs)
    Worker {
        /// Run only the tasks of these queues (repeat or separate with commas; by default,
        /// the `default` queue)
        #[arg(long = "queue", value_name = "NAME", value_delimiter = ',')]
        queues: Vec<String>,
    },
    /// The metadata database: delete old history
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// The REST API (and, later, the web UI) on --bind, against the same database
    Server,
    /// Scheduler and web server in one process, on the embedded default database
    Standalone,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The DAG id
    pub dag: String,
    /// A param value, NAME=VALUE (repeatable)
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// The run's logical date (RFC 3339 or YYYY-MM-DD); default: now
    #[arg(long)]
    pub logical_date: Option<String>,
    /// Print the run as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct TaskTestArgs {
    /// The DAG id
    pub dag: String,
    /// The task id
    pub task: String,
    /// A param value, NAME=VALUE (repeatable)
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// The logical date the task sees (RFC 3339 or YYYY-MM-DD); default: now
    #[arg(long, alias = "logical-date")]
    pub date: Option<String>,
    /// An upstream task's output, TASK=JSON (repeatable; wins over --outputs-from)
    #[arg(long = "output", value_name = "TASK=JSON")]
    pub outputs: Vec<String>,
    /// Read the upstream outputs from this past run of the DAG
    #[arg(long, value_name = "RUN_ID")]
    pub outputs_from: Option<String>,
    /// Which item of a mapped task (for_each) to run
    #[arg(long)]
    pub map_index: Option<i64>,
    /// Record a manual run in which this task ran alone (its try, log and output; the other
    /// tasks skipped), and print its id on stderr; the log is shown when the task ends
    #[arg(long)]
    pub record: bool,
}

/// `flow backfill DAG --from --to`, or `flow backfill cancel|list`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackfillArgs {
    #[command(subcommand)]
    pub command: Option<BackfillCommand>,
    /// The DAG id
    #[arg(required = true)]
    pub dag: Option<String>,
    /// First day (YYYY-MM-DD in the DAG's timezone, or RFC 3339)
    #[arg(long, required = true)]
    pub from: Option<String>,
    /// Last day, inclusive
    #[arg(long, required = true)]
    pub to: Option<String>,
    /// Follow the backfill's runs (those that existed too) until they end
    #[arg(long)]
    pub wait: bool,
    /// A param value for every run, NAME=VALUE (repeatable)
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// Most of its runs queued or running at once (default 100, or the DAG's max_active_runs
    /// when larger)
    #[arg(long)]
    pub max_active_runs: Option<u32>,
    /// Newest interval first
    #[arg(long)]
    pub reverse: bool,
    /// An interval that has a run already: leave it (none), run it again when it failed
    /// (failed), or when it ended (all)
    #[arg(long, default_value = "none", value_parser = ["none", "failed", "all"])]
    pub rerun: String,
    /// Print the intervals; create nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum BackfillCommand {
    /// Stop a backfill: no more runs are created, and its runs that never started fail
    Cancel { id: String },
    /// The backfills, newest first, with their progress
    List {
        #[arg(long)]
        dag: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Delete ended runs queued before a time, with their tries, logs (local and remote), the
    /// DAG versions and dataset events only they used; runs a model version was trained in stay
    Clean {
        /// An age (90d, 12h) or a date (YYYY-MM-DD or RFC 3339, UTC)
        #[arg(long)]
        before: String,
        /// Only this DAG's runs and versions
        #[arg(long)]
        dag: Option<String>,
        /// Count what would go; delete nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DagsCommand {
    /// Validate DAG files (default: the DAGs folder); one PATH:LINE:COL: message per problem
    Validate {
        paths: Vec<PathBuf>,
        /// Also fail on a `connection:` that flow.toml does not define (a warning otherwise)
        #[arg(long)]
        strict: bool,
    },
    /// Print the JSON Schema (2020-12) of the DAG file format, for editors' completion
    Schema,
    /// The DAGs with schedule, pause flag and last run
    List {
        #[arg(long)]
        json: bool,
    },
    /// Pause a DAG: no new scheduled runs, queued runs wait
    Pause { dag: String },
    /// Unpause a DAG
    Unpause { dag: String },
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Runs, newest first
    List {
        #[arg(long)]
        dag: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One run and each of its task instances
    Show {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create an API token and print it, once; only its hash is stored
    Create {
        name: String,
        #[arg(long, default_value = "viewer", value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// How long the token works (`30d`, `12h`); without it, until it is revoked
        #[arg(long)]
        expires: Option<String>,
    },
    /// Every token: name, role, created, last used, expires (never the token itself)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a token: the API refuses it at once, and its page sessions end
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Every model: its versions, the latest one and the production one
    List {
        #[arg(long)]
        json: bool,
    },
    /// A model's versions, newest first, with their metrics, stage and origin
    Show {
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Make a version the production one by hand (a rollback, say); the previous one is archived
    Promote {
        model: String,
        #[arg(value_name = "VERSION")]
        number: i64,
    },
    /// Make the version that was production before the current one production again (a
    /// compare-and-set: nothing changes if production moved meanwhile)
    Rollback { model: String },
}

#[derive(Subcommand, Debug)]
pub enum ExperimentsCommand {
    /// Every experiment and metric: method, state, looks, the leading lift and its p-value
    List {
        #[arg(long)]
        json: bool,
    },
    /// One experiment's records (one per metric) with the last look's result
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a running experiment: its task reads no more data and posts nothing; a concluded
    /// metric stays concluded
    Stop { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// The log of one try (the latest by default), secrets masked
    Logs {
        run_id: String,
        task: String,
        #[arg(long = "try")]
        try_number: Option<i64>,
        #[arg(long)]
        map_index: Option<i64>,
    },
    /// Run one task alone, as `airflow tasks test`: no run is recorded, its log goes to stderr
    /// and its output (JSON) to stdout
    Test(TaskTestArgs),
    /// Reset a task (and with --downstream every task after it) so the scheduler runs it again
    Clear {
        run_id: String,
        task: String,
        #[arg(long)]
        downstream: bool,
    },
}

#[cfg(test)]
mod tests {
    /// clap checks a command's definition only when it is parsed; this checks every subcommand
    /// (two arguments with one name panic at parse time, not at build time).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
