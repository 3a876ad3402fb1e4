//! Wiring: builds the store, queue, provisioner and engine from the config and serves gRPC on a listener
//! the caller bound, until `shutdown` is cancelled.
//!
//! Shutdown order: stop taking jobs → give running jobs `shutdown_grace` to finish → end agent sessions
//! (agents reconnect to the next start) → stop the gRPC server, bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use zeroci::pb::agent_service_server::AgentServiceServer;
use zeroci::pb::control_service_server::ControlServiceServer;
use zeroci::pb::pool_service_server::PoolServiceServer;
use zeroci::pki::{CertificateAuthority, read_to_string};

use crate::api::agent_service::AgentApi;
use crate::api::auth::require_user_certificate;
use crate::api::control_service::ControlApi;
use crate::api::pool_service::PoolApi;
use crate::config::Config;
use crate::engine::{Engine, EngineParts};
use crate::notify::Notifications;
use crate::store::Stores;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Pki(#[from] zeroci::pki::PkiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Controller(#[from] crate::error::ControllerError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("GitHub client: {0}")]
    GitHub(#[from] crate::github::GitHubError),
    #[error(transparent)]
    Provisioner(#[from] crate::provisioner::ProvisionError),
    #[error(transparent)]
    Users(#[from] crate::users::UsersError),
}

/// The address agents dial: `[main] agent_endpoint`, or the bound one with an unspecified IP made
/// loopback (agents on this host).
fn agent_endpoint(config: &Config, bound: SocketAddr) -> String {
    if let Some(endpoint) = &config.main.agent_endpoint {
        return endpoint.clone();
    }
    let ip = if bound.ip().is_unspecified() {
        if bound.is_ipv4() {
            "127.0.0.1".parse().expect("valid IP")
        } else {
            "::1".parse().expect("valid IP")
        }
    } else {
        bound.ip()
    };
    SocketAddr::new(ip, bound.port()).to_string()
}

/// Longest a notifier may take for one job change.
const NOTIFY_CALL_LIMIT: Duration = Duration::from_secs(30);
/// How long shutdown waits for queued notifications.
const NOTIFY_DRAIN: Duration = Duration::from_secs(5);

/// Accepted connections with Nagle's algorithm off: the protocol is many small request/response
/// messages, and Nagle plus delayed ACKs would add ~40 ms to each exchange.
fn nodelay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    incoming.map(|stream| {
        stream.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                warn!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    })
}

/// The sockets the controller serves on, bound by the caller (so tests can bind port 0 and read back
/// the address before anything starts).
pub struct Listeners {
    pub grpc: TcpListener,
    /// Absent when `[main] http_listen` is not set.
    pub http: Option<TcpListener>,
    /// Called once the store and queue are open, recovery is done and both servers accept: the
    /// moment to say "ready" (a backend that cannot be reached ends `serve` before it).
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
}

/// Serves until `shutdown` is cancelled, then drains (bounded).
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let machines = crate::provisioner::build(&config)?;
    serve_with(config, listeners, shutdown, machines).await
}

/// [`serve`] with machines made by the caller (a provisioner wired to a grid other than the one
/// `config` names, such as the tests' simulated ThreeFold Grid).
pub async fn serve_with(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    machines: crate::provisioner::Machines,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: listener,
        http,
        on_ready,
    } = listeners;
    let config = Arc::new(config);
    let ca = CertificateAuthority::load(&config.tls.ca, &config.tls.ca_key)?;
    let revocations = Arc::new(crate::users::Revocations::load(&config.tls.ca)?);
    let tls = zeroci::tls::server_config(
        ca.cert_pem(),
        &read_to_string(&config.tls.cert)?,
        &read_to_string(&config.tls.key)?,
    );
    let stores = Stores::open(&config).await?;
    let queue = crate::queue::build(&config).await?;
    let membership = Arc::new(crate::provisioner::pool::membership::PoolMembership::new(
        stores.join_tokens.clone(),
        machines.pool_hosts.clone(),
    ));
    let bound = listener.local_addr()?;
    let stop_taking = CancellationToken::new();
    let github = match &config.github {
        Some(gh) => Some(Arc::new(crate::github::GitHubApi::new(
            &crate::github::ApiSettings {
                api_url: gh
                    .api_url
                    .clone()
                    .unwrap_or_else(|| crate::github::ApiSettings::default().api_url),
                access_token: gh.access_token.clone(),
                status_context: gh
                    .status_context
                    .clone()
                    .unwrap_or_else(|| crate::github::ApiSettings::default().status_context),
            },
        )?)),
        None => None,
    };
    let mut notifiers: Vec<Arc<dyn crate::notify::Notifier>> = Vec::new();
    if let Some(api) = &github
        && config
            .github
            .as_ref()
            .is_some_and(|g| g.access_token.is_some())
    {
        notifiers.push(Arc::new(crate::notify::GitHubStatuses { api: api.clone() }));
    }
    if config.telegram.is_some() {
        let telegram = crate::notify::telegram::Telegram::for_jobs(config.clone(), stores.clone())
            .map_err(crate::error::ControllerError::FailedPrecondition)?;
        notifiers.push(Arc::new(telegram));
    }
    if let Some(webhook) = &config.webhook {
        let webhook = crate::notify::webhook::JsonWebhook::new(webhook)
            .map_err(crate::error::ControllerError::FailedPrecondition)?;
        notifiers.push(Arc::new(webhook));
    }
    let notifications = Notifications::start(
        notifiers,
        config.main.domain.clone(),
        NOTIFY_CALL_LIMIT,
        stores.jobs.clone(),
    );
    let engine = Engine::new(EngineParts {
        config: config.clone(),
        stores,
        queue,
        provisioner: machines.provisioner,
        ca,
        agent_endpoint: agent_endpoint(&config, bound),
        shutdown: stop_taking.clone(),
        github,
        notifications,
    });
    let tracker = TaskTracker::new();
    engine.recover(&tracker).await?;
    engine.start_workers(&tracker);
    tokio::spawn(engine.clone().take_over_expired(tracker.clone()));
    tokio::spawn(crate::schedules::scheduler::run(
        engine.clone(),
        stop_taking.clone(),
    ));
    crate::triggers::local_refs::watch_configured(&engine, &config, &stop_taking);

    let links_stop = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(AgentServiceServer::new(AgentApi::new(
            engine.clone(),
            links_stop.clone(),
        )))
        .add_service(ControlServiceServer::with_interceptor(
            ControlApi::new(engine.clone(), membership.clone()),
            move |request| require_user_certificate(request, &revocations),
        ))
        // Joined hosts hold a join token, not a certificate; the service checks it.
        .add_service(PoolServiceServer::new(PoolApi::new(
            membership,
            links_stop.clone(),
        )))
        .serve_with_incoming_shutdown(
            nodelay(TcpListenerStream::new(listener)),
            server_stop.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);
    let http_server = http.map(|http| {
        let app = crate::api::http::router(engine.clone());
        let stop = server_stop.clone();
        tokio::spawn(async move {
            // With each client's address, for counting wrong tokens per address.
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(http, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                warn!(error = %e, "HTTP server ended with an error");
            }
        })
    });
    info!(grpc = %bound, state_dir = %config.main.state_dir.display(), workers = config.main.workers, "controller serving");
    if let Some(ready) = on_ready {
        ready();
    }

    tokio::select! {
        _ = shutdown.cancelled() => {}
        result = &mut server => {
            // The server ended on its own: that is a failure, surface it.
            stop_taking.cancel();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(ServeError::Io(std::io::Error::other(e.to_string()))),
            };
        }
    }
    info!("shutting down: no new jobs; waiting for running jobs");
    stop_taking.cancel();
    tracker.close();
    let grace = Duration::from_secs(config.main.shutdown_grace + 5);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("running jobs did not finish in time; their agents will reconnect to the next start");
    }
    // Jobs that ended during the drain still get their notifications out.
    engine.notifications.drain(NOTIFY_DRAIN).await;
    links_stop.cancel();
    server_stop.cancel();
    if let Some(http_server) = http_server
        && tokio::time::timeout(Duration::from_secs(5), http_server)
            .await
            .is_err()
    {
        warn!("HTTP server did not stop in time");
    }
    match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
        Ok(Ok(Ok(()))) => info!("controller stopped"),
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
        Err(_) => warn!("gRPC server did not stop in time; exiting anyway"),
    }
    Ok(())
}
