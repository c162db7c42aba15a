//! The daemon shell: what `main` of every Spoor daemon (the relay, the
//! aggregator) does around its library's `run(config, listener, shutdown)`:
//! set up logging, wait for SIGINT/SIGTERM, and serve HTTP on a bound
//! listener until told to stop.
//!
//! Logs go to stdout through `tracing_subscriber`'s fmt layer, filtered by
//! `RUST_LOG` (default `info`). They carry ANSI colour codes only when both
//! stdout and stderr are terminals and `NO_COLOR` is unset or empty, so a
//! log file, a pipe or a supervisor's capture never holds escape codes.

use std::convert::Infallible;
use std::future::Future;
use std::io::IsTerminal as _;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Installs the global `tracing` subscriber: fmt to stdout, `RUST_LOG`
/// filter (default `info`), colour only on a terminal.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(colour(
            std::env::var_os("NO_COLOR"),
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
        ))
        .init();
}

/// Whether logs may carry colour codes: on terminals only, and never when
/// `NO_COLOR` is set to something (<https://no-color.org>).
fn colour(no_color: Option<std::ffi::OsString>, stdout_tty: bool, stderr_tty: bool) -> bool {
    no_color.is_none_or(|v| v.is_empty()) && stdout_tty && stderr_tty
}

/// Resolves on Ctrl-C or SIGTERM (what container runtimes send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}

/// Serves HTTP/1 on `listener`, each request answered by `handler`, until
/// `stop` resolves; then drops the open connections (nothing a daemon
/// serves is worth a graceful close, and a stopping daemon must not wait on
/// a slow client). Accept errors (EMFILE, a reset before accept) are
/// transient: logged, then a 50 ms pause so a busy loop cannot starve the
/// daemon's other work.
pub async fn serve_http<H, Fut, B>(
    listener: TcpListener,
    handler: H,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let handler = handler.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let answer = handler(req);
                            async move { Ok::<_, Infallible>(answer.await) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(error = %e, "HTTP connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn colour_only_on_terminals_without_no_color() {
        assert!(colour(None, true, true));
        assert!(colour(Some("".into()), true, true));
        assert!(!colour(Some("1".into()), true, true));
        assert!(!colour(None, true, false));
        assert!(!colour(None, false, true));
    }

    #[tokio::test]
    async fn serves_until_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(
            listener,
            |req: Request<Incoming>| async move {
                Response::new(Full::new(Bytes::from(req.uri().path().to_string())))
            },
            async {
                let _ = stop_rx.await;
            },
        ));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("/hello"), "{answer}");
        // An idle open connection does not hold the stop up.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
