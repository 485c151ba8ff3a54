//! A TCP proxy between the relay and a server, for network fault tests: cut every connection, hold
//! traffic without closing (a partition: TCP stays up, nothing moves), or refuse new connections.
//! It runs on its own thread and runtime so it keeps working whatever the test's runtime does.
//!
//! Its target can be switched while it runs ([`Proxy::retarget`]): a fixed address in front of whichever
//! server is primary, as a DNS name or a virtual IP moves in a failover.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
struct Controls {
    /// Where new connections go.
    target: watch::Sender<SocketAddr>,
    /// Bumped by `cut_all`: every connection alive at that moment ends.
    cut: watch::Sender<u64>,
    blackhole: watch::Sender<bool>,
    refuse: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
}

/// A TCP proxy on 127.0.0.1:<port> forwarding to a target. Stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    controls: Arc<Controls>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:<free port> to `target`.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        Self::start_on(0, target)
    }

    /// Starts forwarding 127.0.0.1:`port` to `target` (`port` 0: any free port). A fixed port lets a
    /// server advertise the proxy's address before the proxy's target is up (Kafka's `PROXIED` listener).
    pub fn start_on(port: u16, target: SocketAddr) -> Result<Proxy> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("bind the proxy listener on 127.0.0.1:{port}"))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let controls = Arc::new(Controls {
            target: watch::channel(target).0,
            cut: watch::channel(0).0,
            blackhole: watch::channel(false).0,
            refuse: watch::channel(false).0,
            shutdown: watch::channel(false).0,
        });
        let c = Arc::clone(&controls);
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                    accept_loop(listener, c).await;
                });
                rt.shutdown_background();
            })?;
        Ok(Proxy {
            port,
            controls,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Where new connections go now.
    pub fn target(&self) -> SocketAddr {
        *self.controls.target.borrow()
    }

    /// New connections go to `target` from now on; open ones stay with the old target (call
    /// [`Proxy::cut_all`] too to end them, as a failover ends every session with the old primary).
    pub fn retarget(&self, target: SocketAddr) {
        self.controls.target.send_replace(target);
    }

    /// Closes every open connection now (both sides see a reset/EOF); new ones are still accepted.
    pub fn cut_all(&self) {
        self.controls.cut.send_modify(|n| *n += 1);
    }

    /// While true, no byte is forwarded in either direction, and connections stay open.
    pub fn set_blackhole(&self, on: bool) {
        self.controls.blackhole.send_replace(on);
    }

    /// While true, new connections are closed at once.
    pub fn set_refuse(&self, on: bool) {
        self.controls.refuse.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.controls.shutdown.send_replace(true);
        self.cut_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, c: Arc<Controls>) {
    let mut shutdown = c.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let Ok((inbound, _)) = accepted else { continue };
        if *c.refuse.borrow() {
            drop(inbound);
            continue;
        }
        let target = *c.target.borrow();
        let c = Arc::clone(&c);
        tokio::spawn(async move {
            let mut cut = c.cut.subscribe();
            cut.borrow_and_update();
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::select! {
                _ = pump(ri, wo, c.blackhole.subscribe()) => {}
                _ = pump(ro, wi, c.blackhole.subscribe()) => {}
                _ = cut.changed() => {}
            }
            // Dropping both halves closes both sockets.
        });
    }
}

/// Copies bytes one way; pauses (reads nothing, writes nothing) while the blackhole is on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut blackhole: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if blackhole.wait_for(|on| !*on).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before the blackhole went on are held until it goes off.
        if blackhole.wait_for(|on| !*on).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server that answers every connection with `name` and closes it.
    fn named_server(name: &'static [u8]) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(name);
            }
        });
        addr
    }

    fn ask(proxy: &Proxy) -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(proxy.addr()).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        s.read_exact(&mut buf).expect("read");
        buf.to_vec()
    }

    #[test]
    fn retarget_sends_new_connections_to_the_new_target() {
        let (a, b) = (named_server(b"a"), named_server(b"b"));
        let proxy = Proxy::start(a).expect("proxy");
        assert_eq!(ask(&proxy), b"a");
        proxy.retarget(b);
        assert_eq!(proxy.target(), b);
        assert_eq!(ask(&proxy), b"b");
    }
}
