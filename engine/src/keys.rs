//! What each operator declares about its keys, and the catalog validation reads it from.
//!
//! Apart from [`crate::operator`] (which runs operators) so that parsing a DAG file needs only
//! these declarations: validation knows which keys an operator takes and which of them are code,
//! shell, URL or program text, without depending on how operators run.

/// The keys an operator takes beside the common task keys.
#[derive(Debug, Clone, Copy)]
pub struct OperatorKeys {
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
    /// Keys whose text is code another engine parses (SQL). Their templates may read flow's
    /// own values (`ds`, `data_interval_start`) but not params, task outputs or items: those are
    /// data, and spliced into code they could change what it does; the operator takes them as
    /// bound parameters instead, and validation says so.
    pub code: &'static [&'static str],
    /// Keys whose text a shell runs. Their templates may emit flow's own values and typed
    /// scalar params as they are; anything else from outside the DAG file (string, list or
    /// object params, task outputs, map items) only through `| shell_quote` (or as `env:`).
    /// Validation refuses the rest (see [`crate::template::shell`]).
    pub shell: &'static [&'static str],
    /// Keys whose text is a URL. An outside value may fill its path or query, `| urlencode`d,
    /// never its scheme or host, unless the task lists `allowed_hosts`, which the operator then
    /// enforces on the rendered URL (see [`crate::template::url`]).
    pub url: &'static [&'static str],
    /// Keys that choose the program a task runs (a Spark script, spark-submit's options, which
    /// can load code of their own): only the DAG file's text and flow's own values may fill
    /// them, never a param, an output or an item, whatever filter it goes through. Values for
    /// the program go in its arguments.
    pub program: &'static [&'static str],
}

/// Names operators and their keys, for validation.
pub trait Catalog: Send + Sync {
    fn keys(&self, operator: &str) -> Option<OperatorKeys>;
    fn names(&self) -> Vec<&str>;
}
