//! `callsignal healthcheck`: asks the running server's `GET /healthz` on the configured listen
//! address (over TLS when `[server.tls]` is set, trusting exactly the configured certificate),
//! for container health checks (Docker `HEALTHCHECK`) where no shell tools exist.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Settings;

/// Where the server can be reached from this host: the bind address, with an unspecified IP
/// (`0.0.0.0`, `::`) replaced by loopback.
pub fn local_target(settings: &Settings) -> SocketAddr {
    let bind = settings.server.bind;
    let ip = match bind.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str) -> anyhow::Result<()> {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 512];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut head[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&head[..got]);
    let status = line.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("/healthz answered {status:?}");
    }
    Ok(())
}

/// `Ok` when `/healthz` answers 200 within `timeout`; the error says what failed and where.
pub async fn healthcheck(settings: &Settings, timeout: Duration) -> anyhow::Result<()> {
    let target = local_target(settings);
    tokio::time::timeout(timeout, async {
        let mut tcp = TcpStream::connect(target)
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        match settings.server.tls.paths() {
            None => exchange(&mut tcp, &target.to_string()).await,
            Some((cert, _)) => {
                let config = crate::tls::pinned_client(cert)?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = rustls_pki_types::ServerName::IpAddress(target.ip().into());
                let mut tls = connector
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {target} failed"))?;
                exchange(&mut tls, &target.to_string()).await
            }
        }
        .with_context(|| format!("health check of {target}"))
    })
    .await
    .with_context(|| format!("no answer from {target} within {timeout:?}"))?
}
