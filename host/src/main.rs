//! The `sluice` binary: `sluice serve` (the default) runs the service.

use clap::{Parser, Subcommand};
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let command = match cli.command {
        Some(command) => command,
        None => Cli::parse_from(["sluice", "serve"]).command.expect("serve parses"),
    };
    match command {
        Command::Serve(settings) => {
            let data_dir = settings.data_dir.clone();
            let app = Application::build(settings).await?;
            if let Some(token) = app.generated_admin_token() {
                println!("Generated the admin token of the default tenant (shown once, store it now):\n  {token}");
            }
            tracing::info!(port = app.port(), data_dir = %data_dir.display(), "sluice is listening");
            app.run_until_stopped().await?;
        }
    }
    Ok(())
}
