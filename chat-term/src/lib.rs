//! What the terminal client (`chat`, in `main.rs`) and the other example programs share:
//! signing in (registering on first use) and logging to stderr.
//!
//! This crate depends on the `chat-client` SDK only, so the quickstart's client builds in a
//! fraction of the time the whole workspace takes.

use anyhow::Context as _;
use chat_client::{Client, ErrorCode};
use std::path::Path;

/// Logs in as `email`, registering the account first if the server does not know it yet.
///
/// `ca_cert` is a PEM file of extra root certificates to trust for `https://` servers (a private
/// CA, or a self-signed development certificate); the public web roots are always trusted.
///
/// A wrong password for an existing account fails (registration then answers `conflict`), so a
/// typo never silently creates a second account.
pub async fn sign_in(
    server: &str,
    ca_cert: Option<&Path>,
    email: &str,
    password: &str,
    display_name: Option<&str>,
) -> anyhow::Result<Client> {
    let mut builder = Client::builder(server);
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA certificate {}", path.display()))?;
        builder = builder.add_root_certificate_pem(pem);
    }
    let client = builder
        .build()
        .with_context(|| format!("server URL {server}"))?;
    match client.login(email, password).await {
        Ok(_) => return Ok(client),
        Err(e) if e.code() == Some(&ErrorCode::Unauthenticated) => {}
        Err(e) => return Err(e).context("logging in"),
    }
    match client.register(email, password, display_name).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(&ErrorCode::Conflict) => {
            anyhow::bail!("{email} is registered with another password")
        }
        Err(e) => return Err(e).context("registering"),
    }
    client.login(email, password).await.context("logging in")?;
    Ok(client)
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings only, so the programs' own output
/// on stdout stays readable).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
