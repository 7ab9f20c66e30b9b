//! The `sluice` binary: `sluice serve` (the default) runs the service; the
//! other commands are a client of a running server.

use clap::{Parser, Subcommand};
use sluice::cli::{self, Format, PluginCommand, Remote, TokenCommand};
use sluice::{Application, Settings};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Run sandboxed WebAssembly plugins on a live event stream")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default when no command is given).
    Serve(Settings),
    /// Internal: run one analyst query in a sandboxed process (started by
    /// the server; reads its job on stdin, answers on stdout).
    #[command(hide = true)]
    QueryWorker,
    /// Internal: compile one uploaded component in a process the server can
    /// kill at the compile timeout.
    #[command(hide = true)]
    CompileWorker,
    /// Manage plugins: push, list, versions, rollback, enable, disable, test, logs.
    Plugin {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Run one SELECT over the tenant's events, dead letters, plugin runs and logs.
    Query {
        #[command(flatten)]
        remote: Remote,
        sql: String,
        /// Parameters as a JSON array (or `@file`).
        #[arg(long)]
        params: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Manage API tokens.
    Token {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Dead letters: `replay` runs every one through the current chain.
    DeadLetters {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Replay every dead letter through the current chain.
    Replay,
}

fn print(result: anyhow::Result<String>) -> anyhow::Result<()> {
    match result {
        Ok(out) => {
            println!("{out}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(command) => command,
        None => Cli::parse_from(["sluice", "serve"]).command.expect("serve parses"),
    };
    match command {
        Command::Serve(settings) => serve(settings),
        Command::QueryWorker => sluice::store::query_worker::main(),
        Command::CompileWorker => sluice::runtime::compile_worker::main(),
        Command::Plugin { remote, command } => print(cli::plugin(remote, command)),
        Command::Query { remote, sql, params, format } => print(cli::query(remote, sql, params, format)),
        Command::Token { remote, command } => print(cli::token(remote, command)),
        Command::DeadLetters { remote, command: DeadLetterCommand::Replay } => print(cli::replay_dead_letters(remote)),
    }
}

#[tokio::main]
async fn serve(settings: Settings) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();
    let data_dir = settings.data_dir.clone();
    let app = Application::build(settings).await?;
    if let Some(token) = app.generated_admin_token() {
        println!("Generated the admin token of the default tenant (shown once, store it now):\n  {token}");
    }
    tracing::info!(port = app.port(), data_dir = %data_dir.display(), "sluice is listening");
    app.run_until_stopped().await?;
    Ok(())
}
