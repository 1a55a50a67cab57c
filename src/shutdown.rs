//! Process signals: SIGTERM/SIGINT start a graceful drain; SIGHUP reloads tenants.toml.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    Terminate,
    Reload,
}

/// Spawns a listener that forwards signals; the receiver ends when the process does.
pub fn listen() -> std::io::Result<mpsc::Receiver<SignalEvent>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = term.recv() => SignalEvent::Terminate,
                _ = int.recv() => SignalEvent::Terminate,
                _ = hup.recv() => SignalEvent::Reload,
            };
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
