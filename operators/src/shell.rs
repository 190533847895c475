//! `shell`: a command run by `/bin/sh -c` in its own process group.
//!
//! The group matters: a timeout or a shutdown kills every process the command started, not just
//! the shell. Standard output and error are read line by line and written, masked, to the try's
//! log.

use std::path::Path;
use std::process::Stdio;

use async_trait::async_trait;
use flow_engine::log::LogSink;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

/// The longest line a task's log keeps. The rest of a longer line is dropped as it arrives, so
/// that what a task prints never piles up in the scheduler's memory (a task writing gigabytes
/// without a newline costs this much, not gigabytes).
pub const MAX_LOG_LINE: usize = 64 * 1024;

/// Ends a line cut at [`MAX_LOG_LINE`].
pub const CUT_MARKER: &str = " [flow: line cut at 64 KiB; the rest of it was dropped]";
use tokio::process::Command;

pub struct Shell;

/// Waits for the go-ahead line, then runs the task's command (`$1`) in the same shell, with an
/// empty stdin and the remaining arguments as its positional parameters (none for a shell task),
/// as `sh -c "$1" sh ARGS...` would. `eval` rather than a second
/// `exec /bin/sh -c`: starting a shell costs ~0.7 ms of CPU here (most of it the dynamic loader
/// probing the CPU, slow under virtualisation), so a second one doubled the cost of a short task.
/// The gate shell has no children, so a `wait` in the command waits only for the command's own.
const GATE: &str = r#"IFS= read -r _flow_gate || exit 125; exec </dev/null; _flow_command=$1; shift; unset _flow_gate; eval "$_flow_command""#;

/// Kills the whole process group when dropped: when the try's future is dropped on timeout or
/// shutdown, nothing it started survives.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Copies a child's output into the try's log a line at a time, keeping at most
/// [`MAX_LOG_LINE`] bytes of any line.
async fn pump(reader: impl AsyncRead + Unpin, log: LogSink) {
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    // True while the rest of a line already cut is being dropped.
    let mut dropping = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let newline = chunk.iter().position(|&b| b == b'\n');
        let take = newline.map_or(chunk.len(), |i| i + 1);
        if !dropping {
            let room = MAX_LOG_LINE - line.len();
            line.extend_from_slice(&chunk[..take.min(room)]);
            if take > room || (newline.is_none() && line.len() == MAX_LOG_LINE) {
                let mut text = String::from_utf8_lossy(&line).into_owned();
                text.push_str(CUT_MARKER);
                log.line(&text).await;
                line.clear();
                dropping = true;
            }
        }
        reader.consume(take);
        if newline.is_some() {
            if !dropping {
                log.line(&String::from_utf8_lossy(&line)).await;
            }
            line.clear();
            dropping = false;
        }
    }
    if !line.is_empty() {
        log.line(&String::from_utf8_lossy(&line)).await;
    }
}

#[async_trait]
impl Operator for Shell {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["command"],
            optional: &["env", "cwd"],
            code: &[],
            shell: &["command"],
            url: &[],
            program: &[],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let command = config
            .get("command")
            .and_then(Json::as_str)
            .ok_or_else(|| OperatorError::Fatal("'command' must be a string".into()))?;
        let cwd = match config.get("cwd") {
            None | Some(Json::Null) => ctx.dag_folder.clone(),
            Some(Json::String(dir)) => ctx.dag_folder.join(Path::new(dir)),
            Some(_) => return Err(OperatorError::Fatal("'cwd' must be a string".into())),
        };
        let mut env = ctx.env();
        match config.get("env") {
            None | Some(Json::Null) => {}
            Some(Json::Object(vars)) => {
                for (k, v) in vars {
                    let text = match v {
                        Json::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    env.push((k.clone(), text));
                }
            }
            Some(_) => return Err(OperatorError::Fatal("'env' must be a mapping".into())),
        }
        run_gated(command, &[], &cwd, env, "command", ctx)
            .await
            .map(|()| None)
    }
}

/// The scheduler's environment less every `FLOW_*` variable: flow's own settings
/// (`FLOW_DATABASE_URL`, `FLOW_HOME`, where the admin token is) and every `FLOW_SECRET_*` stay
/// with the scheduler. A task gets back the contract's `FLOW_*` variables and the secrets it
/// names through [`TaskContext::env`]; the rest (`PATH`, `HOME`, `JAVA_HOME`, AWS's own
/// variables) it inherits as before.
/// Read once: flow never changes its own environment, and every try of a 10,000-item map starts
/// a process.
fn inherited_env() -> &'static [(std::ffi::OsString, std::ffi::OsString)] {
    static ENV: std::sync::OnceLock<Vec<(std::ffi::OsString, std::ffi::OsString)>> =
        std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| !k.as_encoded_bytes().starts_with(b"FLOW_"))
            .collect()
    })
}

/// Runs `command` (shell text; `args` are its positional parameters, `$@`) behind the gate in
/// its own process group, its output pumped into the try's log. `what` names it in errors.
pub(crate) async fn run_gated(
    command: &str,
    args: &[String],
    cwd: &Path,
    env: Vec<(String, String)>,
    what: &str,
    ctx: &TaskContext,
) -> Result<(), OperatorError> {
    let mut cmd = Command::new("/bin/sh");
    // The command starts only after its process group is recorded: the outer shell waits for
    // one line on stdin, then runs the command in the same process (same pid and group).
    // If the scheduler dies first, the pipe closes, `read` fails and nothing runs.
    cmd.arg("-c")
        .arg(GATE)
        .arg("flow-shell")
        .arg(command)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd.env_clear()
        .envs(inherited_env().iter().map(|(k, v)| (k, v)))
        .envs(env);
    let mut child = cmd.spawn().map_err(|e| {
        OperatorError::Retryable(format!("cannot start /bin/sh in {}: {e}", cwd.display()))
    })?;
    let pid = child.id();
    let _guard = GroupGuard {
        pgid: pid.map(|p| Pid::from_raw(p as i32)),
    };
    let mut gate = child.stdin.take().expect("piped");
    let recorded = match pid {
        Some(pid) => ctx.record_pid(pid).await,
        None => false,
    };
    if !recorded {
        return Err(OperatorError::Retryable(
            "cannot record the command's process group; not starting it".into(),
        ));
    }
    // Closing stdin after the line gives the command an empty stdin, as /dev/null would.
    if let Err(e) = gate.write_all(b"\n").await {
        return Err(OperatorError::Retryable(format!(
            "cannot start the command: {e}"
        )));
    }
    drop(gate);
    let out = tokio::spawn(pump(child.stdout.take().expect("piped"), ctx.log.clone()));
    let err = tokio::spawn(pump(child.stderr.take().expect("piped"), ctx.log.clone()));
    let status = child
        .wait()
        .await
        .map_err(|e| OperatorError::Retryable(format!("cannot wait for the command: {e}")))?;
    let _ = out.await;
    let _ = err.await;
    if status.success() {
        Ok(())
    } else if let Some(code) = status.code() {
        Err(OperatorError::Retryable(format!(
            "{what} exited with code {code}"
        )))
    } else {
        use std::os::unix::process::ExitStatusExt;
        Err(OperatorError::Retryable(format!(
            "{what} was killed by signal {}",
            status.signal().unwrap_or(0)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_engine::secrets::Masker;

    async fn pumped(input: Vec<u8>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("try.log");
        let log = LogSink::create(&path, "head", Masker::default())
            .await
            .unwrap();
        pump(&input[..], log).await;
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    }

    #[tokio::test]
    async fn lines_are_kept_whole_up_to_the_limit_and_cut_past_it() {
        let mut input = b"short\n".to_vec();
        input.extend(vec![b'a'; MAX_LOG_LINE]);
        input.extend(b"\n");
        input.extend(vec![b'b'; 3 * MAX_LOG_LINE + 17]);
        input.extend(b"\nafter\nno newline at the end");
        let lines = pumped(input).await;
        assert_eq!(
            lines.len(),
            5,
            "{:?}",
            lines.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "short");
        assert_eq!(lines[1].len(), MAX_LOG_LINE + CUT_MARKER.len());
        assert!(lines[2].starts_with('b') && lines[2].ends_with(CUT_MARKER));
        assert_eq!(lines[2].len(), MAX_LOG_LINE + CUT_MARKER.len());
        assert_eq!(lines[3], "after");
        assert_eq!(lines[4], "no newline at the end");
    }
}
