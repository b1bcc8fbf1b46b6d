//! `connections`: the server binary and its tools.

/// glibc's allocator took about a fifth of the server's CPU on the command
/// mix (`perf`: `malloc_consolidate`, `unlink_chunk`); mimalloc cut the
/// process's CPU per command by about as much (README, `bench commands`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit;
mod config;
mod keys;
mod natscmd;
mod review;
mod serve;

use clap::{Parser, Subcommand};
use connections_api::auth::{mint_token, Claims};
use connections_domain::{AgentId, OwnerId};

/// Connections: keeps the credentials AI agents use on their users' behalf.
#[derive(Parser)]
#[command(name = "connections", version)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Run the HTTP server (migrates the database first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Mint a development token (HS256 with CONNECTIONS_JWT_SECRET): a user
    /// token with --user, an agent token with --agent and --owner. Carries
    /// CONNECTIONS_JWT_AUDIENCE and CONNECTIONS_JWT_ISSUER when they are set.
    Token {
        /// The user id the token authenticates.
        #[arg(long, required_unless_present = "agent", conflicts_with = "agent")]
        user: Option<String>,
        /// The agent id of an agent token.
        #[arg(long, requires = "owner")]
        agent: Option<String>,
        /// The user an agent token acts for.
        #[arg(long, requires = "agent")]
        owner: Option<String>,
        /// Lifetime in seconds (default: 24 h for a user, 15 minutes for an agent).
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// NATS authentication: set-up, and credentials for read-only consumers.
    #[command(subcommand)]
    Nats(natscmd::NatsCommand),
    /// Audit the history in the event log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The hygiene review of one owner's connections (as GET /v1/review).
    Review(review::ReviewOptions),
    /// Master key rotation: key ids in use, and re-wrapping every data key
    /// under the current master key.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Read-model maintenance.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Rebuild a read model from the start of the log into fresh tables and
    /// swap it in; the API keeps serving the old tables until the swap.
    Rebuild {
        /// The projection (default: every projection).
        #[arg(long)]
        name: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The driver prints every statement's parameters at debug level: sealed
    // credentials, wrapped keys, keyed fingerprints. Whatever CONNECTIONS_LOG
    // asks, those lines are never written.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONNECTIONS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("tokio_postgres::query=info".parse().expect("a valid directive"));
    // CONNECTIONS_LOG_FORMAT=json: one JSON object per line, with the
    // fields of the spans it happened in (the request id, the command).
    match std::env::var("CONNECTIONS_LOG_FORMAT").as_deref() {
        Ok("json") => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        Ok("text") | Err(_) => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init(),
        Ok(other) => anyhow::bail!("CONNECTIONS_LOG_FORMAT must be text or json, not {other:?}"),
    }
    let cli = Cli::parse();
    match cli.command {
        CliCommand::Serve => serve::run(config::Config::from_env()?).await,
        CliCommand::Migrate => {
            let config = config::Config::from_env()?;
            connections_store::ensure_database(&config.database_url).await?;
            connections_store::migrate(&config.database_url).await?;
            println!("migrations applied");
            Ok(())
        }
        CliCommand::Token { user, agent, owner, ttl } => {
            let secret = config::jwt_secret()?;
            let now = chrono::Utc::now().timestamp();
            let claims = match (user, agent, owner) {
                (Some(user), _, _) => {
                    let user = OwnerId::parse(user).map_err(|e| anyhow::anyhow!("--user {e}"))?;
                    Claims { sub: user.to_string(), exp: now + ttl.unwrap_or(86_400), role: None, owner: None }
                }
                (None, Some(agent), Some(owner)) => {
                    let agent = AgentId::parse(agent).map_err(|e| anyhow::anyhow!("--agent {e}"))?;
                    let owner = OwnerId::parse(owner).map_err(|e| anyhow::anyhow!("--owner {e}"))?;
                    Claims {
                        sub: agent.to_string(),
                        exp: now + ttl.unwrap_or(900),
                        role: Some("agent".into()),
                        owner: Some(owner.to_string()),
                    }
                }
                _ => anyhow::bail!("give --user, or --agent with --owner"),
            };
            anyhow::ensure!(claims.exp > now, "--ttl must be positive");
            let audience = config::jwt_audience();
            let issuer = config::jwt_issuer();
            let token = mint_token(&secret, &claims, audience.as_deref(), issuer.as_deref())?;
            println!("{token}");
            Ok(())
        }
        CliCommand::Projections(ProjectionsCommand::Rebuild { name }) => {
            let config = config::Config::from_env()?;
            connections_store::ensure_database(&config.database_url).await?;
            connections_store::migrate(&config.database_url).await?;
            let database = connections_store::connect_pool(&config.database_url, 2)?;
            let names: Vec<&str> = match &name {
                Some(name) => vec![name.as_str()],
                None => connections_projections::rebuild::PROJECTIONS.to_vec(),
            };
            for name in names {
                let report = connections_projections::rebuild::rebuild(&database, name).await?;
                println!(
                    "rebuilt {name}: {} events to {}:{} (fold {:?}, write and swap {:?})",
                    report.events, report.cursor.transaction_id, report.cursor.position, report.fold, report.write
                );
            }
            Ok(())
        }
        CliCommand::Review(options) => review::run(options, &config::database_url()).await,
        CliCommand::Keys(command) => keys::run(command, &config::database_url()).await,
        CliCommand::Nats(command) => natscmd::run(command),
        CliCommand::Audit(command) => audit::run(command, config::database_url).await,
    }
}
