//! `switchboard serve | check`. Thin: `.env`, TLS provider, config, telemetry, then `app`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::Config;
use switchboard::{app, telemetry, tenants};

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "Twilio Media Streams <-> OpenAI Realtime voice-agent daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve,
    /// Validate the configuration and the tenants file, print what was found.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env is normal; a malformed one is reported.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: .env: {e}");
        return ExitCode::from(2);
    }
    // One TLS provider for the whole process (tungstenite's wss connect needs a default).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check => check(&config),
        Command::Serve => {
            telemetry::init(config.log_json);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(app::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(config: &Config) -> ExitCode {
    let mut problems = 0;
    let set = |b: bool| if b { "set" } else { "NOT SET" };
    println!("configuration");
    println!("  bind                 {}", config.bind);
    println!("  PUBLIC_BASE_URL      {}", config.public_base_url.as_deref().unwrap_or("NOT SET"));
    println!("  stream URL           {}", config.stream_url().as_deref().unwrap_or("-"));
    println!("  TWILIO_AUTH_TOKEN    {}", set(config.twilio_auth_token.is_some()));
    println!("  signature checks     {}", if config.verify_signatures() { "on" } else { "OFF (insecure)" });
    println!("  OPENAI_API_KEY       {}", set(config.openai_api_key.is_some()));
    println!("  realtime URL         {}", config.realtime_url());
    println!("  transcribe model     {}", config.transcribe_model);
    println!("  tenants file         {}", config.tenants_file.display());
    println!();
    match tenants::load(&config.tenants_file) {
        Ok(dir) => print!("{}", tenants::describe(&dir)),
        Err(e) => {
            println!("tenants: {e}");
            problems += 1;
        }
    }
    for p in config.call_readiness_problems() {
        println!("problem: {p}");
        problems += 1;
    }
    if problems == 0 {
        println!("\nok: ready to take calls");
        ExitCode::SUCCESS
    } else {
        println!("\n{problems} problem(s) found");
        ExitCode::FAILURE
    }
}
