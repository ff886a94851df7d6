//! `codebox`: run untrusted code (every language the engine runs: Python, JavaScript,
//! TypeScript) in a sandbox from the command line, or serve the HTTP API.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use codebox::{
    Context, ContextOptions, Engine, ExecuteRequest, Execution, Language, Limits, Progress, Stream,
};

#[derive(Parser)]
#[command(
    name = "codebox",
    version,
    about = about()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run code in a fresh context and print its output, result and error.
    Run(RunArgs),
    /// An interactive session that keeps one context across inputs.
    Repl(LimitArgs),
    /// Serve the HTTP API (native + E2B-compatible).
    Serve(ServeArgs),
    /// Install or list the guest runtimes.
    #[command(subcommand)]
    Runtimes(RuntimesCommand),
    /// Build, list or remove Python templates (interpreters snapshotted after a setup).
    #[command(subcommand)]
    Template(TemplateCommand),
}

#[derive(Args)]
struct RunArgs {
    /// Code to run.
    #[arg(short = 'c', long = "code", conflicts_with = "script")]
    code: Option<String>,
    /// A script to run (`-` for stdin); its extension picks the language.
    script: Option<PathBuf>,
    /// Upload a local file into /home/user first: LOCAL or LOCAL:DEST (DEST relative to
    /// /home/user). Repeatable.
    #[arg(long = "file", value_name = "LOCAL[:DEST]")]
    files: Vec<String>,
    /// Print the whole execution as JSON instead.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Args)]
struct LimitArgs {
    #[arg(long, value_name = "LANG", help = language_help(), value_parser = parse_language)]
    lang: Option<Language>,
    /// Time limit per execution, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
    /// Memory limit, in MiB.
    #[arg(long, value_name = "MB", default_value_t = 1024)]
    memory: u64,
    /// Fuel budget per execution (turns on fuel metering; compiles a metered runtime once).
    #[arg(long)]
    fuel: Option<u64>,
    /// Environment variable for the guest, KEY=VALUE. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Python: the template to start from (`stdlib`, `data` or a custom one). Default: `data`
    /// when it is built, else `stdlib`.
    #[arg(long, value_name = "NAME")]
    template: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "CODEBOX_ADDR")]
    addr: String,
    /// A file with API keys, one per line (added to those in CODEBOX_API_KEYS, comma-separated).
    /// With no key at all, one is generated and printed.
    #[arg(long, value_name = "FILE", env = "CODEBOX_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// Most live sandboxes.
    #[arg(long, default_value_t = 100, env = "CODEBOX_MAX_SANDBOXES")]
    max_sandboxes: usize,
    /// Most live contexts over all sandboxes.
    #[arg(long, default_value_t = 200, env = "CODEBOX_MAX_CONTEXTS")]
    max_contexts: usize,
    /// Memory limit of each context, in MiB.
    #[arg(
        long,
        value_name = "MB",
        default_value_t = 1024,
        env = "CODEBOX_MEMORY"
    )]
    memory: u64,
    /// Memory all live contexts may reserve together, in MiB (each reserves its limit);
    /// past it, new contexts get 429. Default: three quarters of physical memory.
    #[arg(long, value_name = "MB", env = "CODEBOX_MEMORY_BUDGET")]
    memory_budget: Option<u64>,
    /// Directory for sandbox home directories (default: the system temp directory).
    #[arg(long, value_name = "DIR", env = "CODEBOX_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds requests in flight may go on after SIGTERM or Ctrl-C before every sandbox is
    /// killed.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10.0,
        env = "CODEBOX_SHUTDOWN_GRACE"
    )]
    shutdown_grace: f64,
    /// Log format on stderr: `text` or `json` (one object per line). The level is set with
    /// CODEBOX_LOG (e.g. `debug`, `codebox_server=info`; default `info`).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "text",
        env = "CODEBOX_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum RuntimesCommand {
    /// Download (with pip), verify and install the runtimes, compile them once and build the
    /// `stdlib` and `data` templates (about three minutes in all, once).
    Install {
        /// Use this local wheel instead of downloading it.
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Do not build the templates now (contexts then build them in the background).
        #[arg(long)]
        no_template: bool,
    },
    /// Show the pinned runtimes and whether they are installed.
    List,
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Build a custom template: run SETUP (its names stay), then WARMUP (its names go), and
    /// snapshot the interpreter. About a minute.
    Build {
        /// The template's name: lowercase letters, digits, '-' and '_'.
        name: String,
        /// Python file run first; what it imports and defines is in every context.
        #[arg(long, value_name = "FILE")]
        setup: PathBuf,
        /// Python file run after the setup to warm caches; its names are dropped.
        #[arg(long, value_name = "FILE")]
        warmup: Option<PathBuf>,
    },
    /// List the templates and whether each is built.
    List,
    /// Remove a custom template (or a built-in template's cached module).
    Remove {
        /// The template's name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Repl(args) => repl(args).await,
            Command::Serve(args) => serve(args).await,
            Command::Runtimes(RuntimesCommand::Install { wheel, no_template }) => {
                install(wheel, !no_template).await
            }
            Command::Runtimes(RuntimesCommand::List) => list(),
            Command::Template(command) => template(command).await,
        }
    });
    // Work still running on blocking threads (a JavaScript runtime load, say) must not hold
    // the exit up.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("codebox: error: {message}");
    ExitCode::from(2)
}

type CliResult = Result<ExitCode, String>;

/// An engine for one command. `background` lets it build the `data` template in the
/// background when it is missing: only worth it in a process that lives long enough.
async fn engine(fuel: bool, background: bool) -> Result<Engine, String> {
    tokio::task::spawn_blocking(move || {
        Engine::builder()
            .fuel_metering(fuel)
            .max_contexts(4)
            .build_default_template(background)
            .build()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// The one-line description, naming every language.
fn about() -> String {
    format!(
        "Run untrusted code in a WebAssembly sandbox ({})",
        Language::list()
    )
}

/// `--lang`'s help: every language with its aliases.
fn language_help() -> String {
    let names: Vec<String> = Language::ALL
        .iter()
        .map(|l| match l.aliases() {
            [] => l.name().to_string(),
            aliases => format!("{} ({})", l.name(), aliases.join(", ")),
        })
        .collect();
    format!(
        "Language: {}. Default: from the script's extension, else python",
        names.join(", ")
    )
}

fn parse_language(name: &str) -> Result<Language, String> {
    Language::parse(name).ok_or_else(|| format!("unknown language; use {}", Language::list()))
}

/// `--lang`, else the script's extension, else Python.
fn language(args: &LimitArgs, script: Option<&std::path::Path>) -> Language {
    args.lang.unwrap_or_else(|| {
        script
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .and_then(Language::from_extension)
            .unwrap_or(Language::Python)
    })
}

async fn context(
    args: &LimitArgs,
    language: Language,
    long_lived: bool,
) -> Result<Context, String> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err("--timeout must be a positive number of seconds".into());
    }
    let limits = Limits {
        timeout: Duration::from_secs_f64(args.timeout.min(86_400.0)),
        memory_bytes: args.memory.saturating_mul(1 << 20),
        fuel: args.fuel,
        ..Limits::default()
    };
    let mut options = ContextOptions::new().limits(limits).language(language);
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("--env {pair:?} is not KEY=VALUE"));
        };
        options = options.env(key, value);
    }
    options.template = args.template.clone();
    // A one-shot run exits long before a background build would finish.
    let engine = engine(args.fuel.is_some(), long_lived).await?;
    engine
        .create_context(options)
        .await
        .map_err(|e| e.to_string())
}

async fn run(args: RunArgs) -> CliResult {
    let code = match (&args.code, &args.script) {
        (Some(code), _) => code.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))?
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        (None, None) => return Err("give code with -c CODE or a script file".into()),
    };
    let ctx = context(
        &args.limits,
        language(&args.limits, args.script.as_deref()),
        false,
    )
    .await?;
    for spec in &args.files {
        let (local, dest) = match spec.rsplit_once(':') {
            Some((local, dest)) if !dest.is_empty() && !local.is_empty() => {
                (PathBuf::from(local), dest.to_string())
            }
            _ => {
                let local = PathBuf::from(spec);
                let name = local
                    .file_name()
                    .ok_or_else(|| format!("--file {spec:?} names no file"))?
                    .to_string_lossy()
                    .into_owned();
                (local, name)
            }
        };
        let bytes =
            std::fs::read(&local).map_err(|e| format!("cannot read {}: {e}", local.display()))?;
        ctx.files()
            .write(&dest, &bytes)
            .map_err(|e| e.to_string())?;
    }

    let request = ExecuteRequest::new(code);
    let execution = if args.json {
        ctx.execute(request).await
    } else {
        ctx.execute(request.on_output(print_chunk)).await
    }
    .map_err(|e| e.to_string())?;
    if args.json {
        let json = serde_json::to_string_pretty(&execution).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print_outcome(&execution);
    }
    Ok(exit_code(&execution))
}

fn print_chunk(stream: Stream, text: &str) {
    match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        Stream::Stderr => {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    }
}

/// Prints what was not streamed: the result, truncation notes and the error.
fn print_outcome(execution: &Execution) {
    for note in [
        (execution.stdout_truncated, "stdout"),
        (execution.stderr_truncated, "stderr"),
    ]
    .iter()
    .filter(|(cut, _)| *cut)
    {
        eprintln!("codebox: {} was cut at the output limit", note.1);
    }
    if let Some(text) = execution.text() {
        println!("{text}");
    }
    if let Some(error) = &execution.error {
        eprintln!("{error}");
    }
}

fn exit_code(execution: &Execution) -> ExitCode {
    ExitCode::from(execution.exit_code().clamp(0, 255) as u8)
}

async fn repl(args: LimitArgs) -> CliResult {
    let language = language(&args, None);
    let ctx = context(&args, language, true).await?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("codebox {language} sandbox; state persists between inputs. Ctrl-D to quit.");
    }
    let mut lines = std::io::stdin().lock().lines();
    let mut last_failed = false;
    while let Some(cell) = read_cell(&mut lines, interactive)? {
        if cell.trim().is_empty() {
            continue;
        }
        let execution = ctx
            .execute(ExecuteRequest::new(cell).on_output(print_chunk))
            .await
            .map_err(|e| e.to_string())?;
        print_outcome(&execution);
        last_failed = execution.error.is_some();
        if let Some(status) = execution.exit_status {
            return Ok(ExitCode::from(status.clamp(0, 255) as u8));
        }
    }
    Ok(if last_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads one cell: a single line, or, after a line ending in `:` (a block) or with unclosed
/// brackets, lines up to the next empty one.
fn read_cell(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    interactive: bool,
) -> Result<Option<String>, String> {
    let prompt = |p: &str| {
        if interactive {
            eprint!("{p}");
            let _ = std::io::stderr().flush();
        }
    };
    prompt(">>> ");
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    let first = first.map_err(|e| format!("reading input: {e}"))?;
    let mut cell = first.clone();
    let mut depth = bracket_depth(&first);
    let mut block = first.trim_end().ends_with(':');
    while block || depth > 0 {
        prompt("... ");
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| format!("reading input: {e}"))?;
        if line.trim().is_empty() && depth <= 0 {
            break;
        }
        depth += bracket_depth(&line);
        block = block || line.trim_end().ends_with(':');
        cell.push('\n');
        cell.push_str(&line);
    }
    Ok(Some(cell))
}

fn bracket_depth(line: &str) -> i32 {
    line.chars()
        .map(|c| match c {
            '(' | '[' | '{' => 1,
            ')' | ']' | '}' => -1,
            _ => 0,
        })
        .sum()
}

async fn serve(args: ServeArgs) -> CliResult {
    let mut keys =
        codebox_server::ServerConfig::keys_from_env_and_file(args.api_keys_file.as_deref())
            .map_err(|e| format!("cannot read the API keys file: {e}"))?;
    if keys.is_empty() {
        let key = generated_key()?;
        eprintln!(
            "codebox: no API keys configured (CODEBOX_API_KEYS or --api-keys-file); using this one for this run:\n{key}"
        );
        keys.push(key);
    }
    init_logging(args.log_format)?;
    let mut config = codebox_server::ServerConfig::new(keys);
    config.max_sandboxes = args.max_sandboxes;
    config.limits.memory_bytes = args.memory.saturating_mul(1 << 20);
    if let Some(mb) = args.memory_budget {
        config.memory_budget_bytes = mb.saturating_mul(1 << 20);
    }
    config
        .limits
        .validate()
        .map_err(|_| "--memory must be between 16 and 4096 (MiB)".to_string())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.shutdown_grace = Duration::try_from_secs_f64(args.shutdown_grace)
        .map_err(|_| "--shutdown-grace must be a number of seconds, 0 or more".to_string())?;
    let max_contexts = args.max_contexts;
    let engine =
        tokio::task::spawn_blocking(move || Engine::builder().max_contexts(max_contexts).build())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let server = codebox_server::Server::bind(engine, config, &args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    eprintln!(
        "codebox: listening on http://{} (API: /openapi.json)",
        server.local_addr()
    );
    server
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("codebox: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Structured logs on stderr for the server: request ids, sandbox ids, outcomes and
/// durations, never code or file contents.
fn init_logging(format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("CODEBOX_LOG") {
        Ok(directives) => EnvFilter::try_new(&directives)
            .map_err(|e| format!("CODEBOX_LOG is not a valid log filter: {e}"))?,
        Err(_) => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

fn generated_key() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("cannot generate an API key: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn install(wheel: Option<PathBuf>, build_template: bool) -> CliResult {
    let installed = tokio::task::spawn_blocking(move || {
        codebox::install_runtimes(None, wheel.as_deref(), &Progress::stderr())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    // Compile now, once, so the first run is fast.
    let engine = engine(false, false).await?;
    for runtime in installed {
        println!(
            "{} {} ready in {}",
            runtime.package,
            runtime.version,
            runtime.dir.display()
        );
    }
    if build_template {
        for name in [codebox::STDLIB_TEMPLATE, codebox::DATA_TEMPLATE] {
            engine
                .prepare_template(name)
                .await
                .map_err(|e| e.to_string())?;
            println!("template {name} ready");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn template(command: TemplateCommand) -> CliResult {
    let engine = engine(false, false).await?;
    match command {
        TemplateCommand::Build {
            name,
            setup,
            warmup,
        } => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            };
            let mut recipe = codebox::TemplateRecipe::new(read(&setup)?);
            if let Some(path) = &warmup {
                recipe = recipe.warmup(read(path)?);
            }
            engine
                .build_template(&name, recipe)
                .await
                .map_err(|e| e.to_string())?;
            println!("template {name} ready; use it with --template {name}");
        }
        TemplateCommand::List => {
            for info in engine.templates() {
                let kind = if info.builtin { "built-in" } else { "custom" };
                let state = if info.built { "built" } else { "not built" };
                println!("{}\t{kind}\t{state}", info.name);
            }
        }
        TemplateCommand::Remove { name } => {
            engine.remove_template(&name).map_err(|e| e.to_string())?;
            println!("template {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list() -> CliResult {
    for runtime in codebox::installed_runtimes(None) {
        let state = runtime.problem.as_deref().unwrap_or("installed");
        println!(
            "{}\t{} {}\t{}\t{}",
            runtime.name,
            runtime.package,
            runtime.version,
            runtime.dir.display(),
            state
        );
    }
    Ok(ExitCode::SUCCESS)
}
