//! The `image-gateway` binary: flags, configuration, logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use image_gateway::app::Application;
use image_gateway::app::cli::KeysCommand;
use image_gateway::config::Settings;

#[global_allocator]
static ALLOCATOR: image_gateway::alloc::Split = image_gateway::alloc::Split;

/// An OpenAI-compatible image generation gateway for Google's Imagen 4 on fal.ai.
///
/// Configuration layers, later wins: built-in defaults, the --config TOML file,
/// IMAGE_GATEWAY__SECTION__KEY environment variables, and FAL_KEY.
/// Without FAL_KEY the gateway serves images from its built-in offline renderer.
#[derive(Parser)]
#[command(name = "image-gateway", version, about, long_about)]
struct Cli {
    /// TOML configuration file (see deploy/config.example.toml).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "IMAGE_GATEWAY_CONFIG",
        global = true
    )]
    config: Option<PathBuf>,

    /// Validate the configuration, print the effective values (secrets
    /// redacted) and exit.
    #[arg(long)]
    check_config: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Client keys in the database (database.url): create, list, revoke.
    /// The same as the admin API, without a running gateway.
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
}

fn main() -> ExitCode {
    image_gateway::alloc::no_transparent_huge_pages();
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("image-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Keys { action }) = &cli.command {
        return match image_gateway::app::cli::run(&settings, action) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("image-gateway keys: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.check_config {
        for warning in &settings.warnings {
            eprintln!("image-gateway: warning: {warning}");
        }
        println!("# configuration is valid");
        println!("# backend in use: {}", settings.backend_kind().as_str());
        print!("{}", settings.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    image_gateway::telemetry::init(&settings.log);
    image_gateway::install_crypto_provider();
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).map_err(|e| e.to_string())?;
        app.run_until_stopped().await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "image-gateway failed");
            eprintln!("image-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
