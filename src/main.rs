//! `pollgate`: parse config, set up logging, bind, serve until SIGTERM/SIGINT.
//! Only wiring; the logic lives in the library ([`pollgate::app`]).

use std::process::ExitCode;

use pollgate::app;
use pollgate::config::{self, LoadError, LogFormat};
use pollgate::server::Listeners;

/// `EX_USAGE` from sysexits.h: the config is wrong.
const EXIT_CONFIG: u8 = 64;
/// `EX_UNAVAILABLE`: a port could not be bound.
const EXIT_BIND: u8 = 69;

fn main() -> ExitCode {
    pollgate::alloc::tune();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    pollgate::reload::set_source(pollgate::reload::Source {
        args: args.clone(),
        env: env.clone(),
    });
    let cli = match config::load(args, &env) {
        Ok(cli) => cli,
        Err(LoadError::Display(s)) => {
            print!("{s}");
            return ExitCode::SUCCESS;
        }
        Err(LoadError::Invalid(errs)) => {
            errs.iter().for_each(|e| eprintln!("pollgate: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        cli.warnings
            .iter()
            .for_each(|w| eprintln!("pollgate: warning: {w}"));
        print!("{}", config::to_toml(&cli.config));
        return ExitCode::SUCCESS;
    }
    init_tracing(&cli.config, &env);
    cli.warnings.iter().for_each(|w| tracing::warn!("{w}"));
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(serve(cli.config))
}

async fn serve(cfg: config::Config) -> ExitCode {
    let listeners = match Listeners::bind(&cfg).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pollgate: cannot bind {e}");
            return ExitCode::from(EXIT_BIND);
        }
    };
    tracing::info!(public = %listeners.public_addr(), internal = %listeners.internal_addr(), "pollgate listening");
    match app::run(cfg, listeners, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("pollgate stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollgate: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` when set, else by `log_level`,
/// which a reload can then change (the filter sits behind a reload handle).
fn init_tracing(cfg: &config::Config, env: &[(String, String)]) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{reload, EnvFilter};
    let rust_log = env.iter().find(|(k, _)| k == "RUST_LOG").map(|(_, v)| v);
    let level = || EnvFilter::new(&cfg.log_level);
    let filter = rust_log.map_or_else(level, |f| EnvFilter::try_new(f).unwrap_or_else(|_| level()));
    let (filter, handle) = reload::Layer::new(filter);
    if rust_log.is_none() {
        pollgate::reload::set_log_filter(Box::new(move |f| {
            let filter = EnvFilter::try_new(f).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        }));
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let logs = tracing_subscriber::registry().with(filter);
    match cfg.log_format {
        LogFormat::Json => logs.with(fmt.json()).init(),
        LogFormat::Text => logs.with(fmt).init(),
    }
}
