//! `platform-sim`: runs the three platform simulators on one port until SIGTERM or SIGINT.
//!
//! Prints exactly one line to stdout, `listening on http://HOST:PORT`, once the port is bound,
//! so scripts can read the port; prints the request statistics to stderr on exit.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use platform_sim::{BadSignMode, SimConfig, SimScript};

#[derive(Parser, Debug)]
#[command(
    name = "platform-sim",
    about = "Loopback simulators of the 4pyun, epeis and lbbtech platforms"
)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "PLATFORM_SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Script file (JSON): {"pyun": {..}, "epeis": {..}, "lbbtech": {..}, "random": {..}}.
    #[arg(long, env = "PLATFORM_SIM_SCRIPT")]
    script: Option<PathBuf>,

    /// 4pyun app_id requests must carry [default: demo app].
    #[arg(long, env = "PLATFORM_SIM_PYUN_APP_ID")]
    pyun_app_id: Option<String>,
    /// 4pyun signing secret [default: demo secret]; prefer the file form.
    #[arg(long, env = "PLATFORM_SIM_PYUN_APP_SECRET", hide_env_values = true)]
    pyun_app_secret: Option<String>,
    /// File holding the 4pyun signing secret.
    #[arg(
        long,
        env = "PLATFORM_SIM_PYUN_APP_SECRET_FILE",
        conflicts_with = "pyun_app_secret"
    )]
    pyun_app_secret_file: Option<PathBuf>,
    /// The code 4pyun replies on success ("200" or "1001").
    #[arg(long, env = "PLATFORM_SIM_PYUN_SUCCESS_CODE")]
    pyun_success_code: Option<String>,
    /// How 4pyun answers a bad signature.
    #[arg(long, env = "PLATFORM_SIM_PYUN_BAD_SIGN", value_enum)]
    pyun_bad_sign: Option<BadSign>,

    /// epeis SYS_HEAD.CHANNEL_DID [default: demo channel].
    #[arg(long, env = "PLATFORM_SIM_EPEIS_CHANNEL_DID")]
    epeis_channel_did: Option<String>,
    /// epeis SYS_HEAD.DYNAMIC_KEY [default: demo key]; prefer the file form.
    #[arg(long, env = "PLATFORM_SIM_EPEIS_DYNAMIC_KEY", hide_env_values = true)]
    epeis_dynamic_key: Option<String>,
    /// File holding the epeis DYNAMIC_KEY.
    #[arg(
        long,
        env = "PLATFORM_SIM_EPEIS_DYNAMIC_KEY_FILE",
        conflicts_with = "epeis_dynamic_key"
    )]
    epeis_dynamic_key_file: Option<PathBuf>,

    /// lbbtech token [default: demo-token]; prefer the file form.
    #[arg(long, env = "PLATFORM_SIM_LBBTECH_TOKEN", hide_env_values = true)]
    lbbtech_token: Option<String>,
    /// File holding the lbbtech token.
    #[arg(
        long,
        env = "PLATFORM_SIM_LBBTECH_TOKEN_FILE",
        conflicts_with = "lbbtech_token"
    )]
    lbbtech_token_file: Option<PathBuf>,
    /// How long an lbbtech start result stays queryable, in milliseconds [default: 60000].
    #[arg(long, env = "PLATFORM_SIM_LBBTECH_RESULT_TTL_MS")]
    lbbtech_result_ttl_ms: Option<u64>,

    /// Skew of the platforms' clock against the system clock, in milliseconds.
    #[arg(long, env = "PLATFORM_SIM_CLOCK_OFFSET_MS", allow_hyphen_values = true)]
    clock_offset_ms: Option<i64>,

    /// Count requests without keeping each one (benchmarks: constant memory; /_sim/requests
    /// then lists nothing, /_sim/stats counts everything).
    #[arg(long, env = "PLATFORM_SIM_COUNT_ONLY")]
    count_only: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BadSign {
    /// {"code":"401","message":"签名验证不通过"}
    Code401,
    /// {"code":"200","message":"已忽略当前请求","hint":"签名验证不通过"}
    Ignore200,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing script {path}")]
    Script {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("listening on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the listening line")]
    Announce(#[source] std::io::Error),
    #[error("installing the signal handler")]
    Signal(#[source] std::io::Error),
}

/// A secret from its file, without the trailing newline editors add.
fn read_secret(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| CliError::Read {
            path: path.to_owned(),
            source,
        })
}

fn secret(direct: Option<String>, file: Option<&Path>) -> Result<Option<String>, CliError> {
    match (direct, file) {
        (Some(value), _) => Ok(Some(value)),
        (None, Some(path)) => read_secret(path).map(Some),
        (None, None) => Ok(None),
    }
}

fn config(args: &Args) -> Result<SimConfig, CliError> {
    let mut config = SimConfig::default();
    if let Some(app_id) = &args.pyun_app_id {
        config.pyun_app_id = app_id.clone();
    }
    if let Some(value) = secret(
        args.pyun_app_secret.clone(),
        args.pyun_app_secret_file.as_deref(),
    )? {
        config.pyun_app_secret = value;
    }
    if let Some(code) = &args.pyun_success_code {
        config.pyun_success_code = code.clone();
    }
    if let Some(mode) = args.pyun_bad_sign {
        config.pyun_bad_sign = match mode {
            BadSign::Code401 => BadSignMode::Code401,
            BadSign::Ignore200 => BadSignMode::Ignore200,
        };
    }
    if let Some(channel) = &args.epeis_channel_did {
        config.epeis_channel_did = channel.clone();
    }
    if let Some(value) = secret(
        args.epeis_dynamic_key.clone(),
        args.epeis_dynamic_key_file.as_deref(),
    )? {
        config.epeis_dynamic_key = value;
    }
    if let Some(value) = secret(
        args.lbbtech_token.clone(),
        args.lbbtech_token_file.as_deref(),
    )? {
        config.lbbtech_token = value;
    }
    if let Some(ms) = args.lbbtech_result_ttl_ms {
        config.lbbtech_result_ttl = Duration::from_millis(ms);
    }
    if let Some(offset) = args.clock_offset_ms {
        config.clock_offset_ms = offset;
    }
    config.count_only = args.count_only;
    Ok(config)
}

fn load_script(path: &Path) -> Result<SimScript, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CliError::Script {
        path: path.to_owned(),
        source,
    })
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
async fn terminated() -> Result<(), CliError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(CliError::Signal)?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.map_err(CliError::Signal),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(CliError::Signal)
    }
}

async fn run(args: Args) -> Result<(), CliError> {
    let config = config(&args)?;
    let script = args.script.as_deref().map(load_script).transpose()?;
    let sim = platform_sim::start(args.listen, config)
        .await
        .map_err(|source| CliError::Bind {
            addr: args.listen,
            source,
        })?;
    if let Some(script) = script {
        sim.apply_script(script);
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", sim.base_url()).map_err(CliError::Announce)?;
    stdout.flush().map_err(CliError::Announce)?;
    drop(stdout);

    let stopped = terminated().await;
    let stats = serde_json::to_string_pretty(&sim.stats()).unwrap_or_default();
    eprintln!("platform-sim stats: {stats}");
    sim.shutdown().await;
    stopped
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("platform-sim: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
