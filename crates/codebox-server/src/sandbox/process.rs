//! Process emulation. A sandbox has no processes, but agents ask for `python3 -c CODE`,
//! `python3 script.py`, `node -e CODE` and `node script.js`; each runs in a fresh context of
//! the sandbox in the engine's script mode (no echoed last value, Python tracebacks name
//! `<string>`), and answers like a finished process: stdout, stderr with the error, and an
//! exit code. Which programs exist and which flag takes inline code is the engine's
//! `Language` metadata.

use codebox::{ExecutionMode, Language};

use super::run::{execute_request, execution_timeout};
use super::{Registry, Sandbox, SandboxError};
use crate::util::clip;

/// A command line to emulate.
#[derive(Debug)]
pub(crate) struct Command {
    /// The program: one of the engine's `Language::commands`, or a path ending in one.
    pub program: String,
    pub args: Vec<String>,
    /// Seconds; `None` for the context's limit.
    pub timeout: Option<f64>,
}

/// What a finished process reports.
#[derive(Debug)]
pub(crate) struct ProcessOutput {
    pub stdout: String,
    /// The guest's stderr, then the error (traceback) if the script failed.
    pub stderr: String,
    /// `sys.exit`'s status; 1 after an error; else 0.
    pub exit_code: i32,
}

impl Registry {
    /// Runs `command` in a fresh context of `sandbox`, which goes when it ends.
    pub async fn run_process(
        &self,
        sandbox: &Sandbox,
        command: Command,
    ) -> Result<ProcessOutput, SandboxError> {
        let timeout = execution_timeout(&self.config, command.timeout)?;
        let language = Language::from_command(&command.program).ok_or_else(|| {
            SandboxError::UnknownCommand {
                command: clip(&command.program, 60),
            }
        })?;
        let inline_flag = language.inline_flag();
        let code = match command.args.as_slice() {
            [flag, code, ..] if flag == inline_flag => code.clone(),
            [script, ..] if !script.starts_with('-') => {
                String::from_utf8(sandbox.home.read(script)?)
                    .map_err(|_| SandboxError::InvalidInput("the script is not UTF-8".into()))?
            }
            _ => {
                return Err(SandboxError::InvalidInput(format!(
                    "give {inline_flag} CODE or a script path"
                )));
            }
        };
        let entry = self.new_context(sandbox, language, None, None).await?;
        let request = execute_request(code, timeout).mode(ExecutionMode::Script);
        // Like any execution, a process stops when its sandbox is killed.
        let run = sandbox.execute(&entry, request).await?;
        let exit_code = run.exit_code();
        let mut stderr = run.stderr;
        if let Some(error) = &run.error {
            stderr.push_str(&error.to_string());
            stderr.push('\n');
        }
        Ok(ProcessOutput {
            exit_code,
            stdout: run.stdout,
            stderr,
        })
    }
}
