//! Stopping: the signals that start it, and the graceful stop itself.

use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};

use crate::service::GenerationService;

/// SIGTERM or SIGINT, whichever comes first.
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT");
            std::future::pending().await
        }
    }
}

/// Serve until a signal (or a handle's `stop`): stop accepting, give
/// in-flight requests `grace`, then cancel what remains upstream and wait
/// briefly for those cancellations.
pub async fn serve_until_stopped(
    server: Server,
    admin: Option<Server>,
    service: &GenerationService,
    grace: Duration,
) -> std::io::Result<()> {
    let handle = server.handle();
    let admin_handle = admin.as_ref().map(Server::handle);
    let admin = async {
        match admin {
            Some(admin) => admin.await,
            None => Ok(()),
        }
    };
    let servers = futures_util::future::try_join(server, admin);
    tokio::pin!(servers);
    let result = tokio::select! {
        r = &mut servers => r,
        signal = signal() => {
            service.begin_draining();
            tracing::info!(signal, grace_seconds = grace.as_secs(), "shutting down: finishing in-flight requests");
            // The servers must keep being polled while they stop.
            let stopping = async { tokio::join!(stop(&handle, admin_handle.as_ref()), &mut servers).1 };
            tokio::pin!(stopping);
            tokio::select! {
                r = &mut stopping => r,
                () = tokio::time::sleep(grace) => {
                    // Grace is over: cancel what is still generating, so
                    // its clients get a retryable 503 rather than a reset,
                    // and fal stops working on it.
                    tracing::warn!(
                        in_flight = service.in_flight(),
                        "grace period over: cancelling the remaining generations"
                    );
                    service.cancel_all();
                    stopping.await
                }
            }
        }
    };
    service.shutdown(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    result.map(|_| ())
}

/// The API listener first; the admin listener (probes, metrics) keeps
/// answering until the API's in-flight requests are done, so `/readyz` says
/// 503 through the grace period and the last scrapes still see it.
async fn stop(api: &ServerHandle, admin: Option<&ServerHandle>) {
    api.stop(true).await;
    if let Some(h) = admin {
        h.stop(true).await;
    }
}
