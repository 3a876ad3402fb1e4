//! A TCP link the test can break: a forwarding proxy between a client (an agent) and a server (the
//! controller) that can be cut like a network partition and restored.
//!
//! A cut stops forwarding in both directions without closing anything: the proxy stops reading, so
//! the kernels' buffers fill and the peers see silence, as when a route disappears. New connections
//! are accepted but not forwarded either. Restoring resumes every connection that both peers kept
//! open, with the bytes held in between delivered in order, and lets new connections through.
//! [`Link::reset`] is the other fault: every open connection is closed at once.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

/// The proxy; dropping it stops accepting and closes every connection.
pub struct Link {
    /// `host:port` clients dial instead of the server.
    pub addr: String,
    state: Arc<State>,
}

struct State {
    upstream: String,
    /// True while the link is cut; guarded for the condition variable.
    cut: Mutex<bool>,
    restored: Condvar,
    stopped: AtomicBool,
    /// Both ends of every connection, so a reset or the drop can close them.
    open: Mutex<Vec<TcpStream>>,
    /// Connections accepted over the link's life.
    accepted: Mutex<u64>,
}

impl State {
    /// Blocks while the link is cut.
    fn wait_open(&self) {
        let mut cut = self.cut.lock().unwrap();
        while *cut && !self.stopped.load(Ordering::SeqCst) {
            cut = self.restored.wait(cut).unwrap();
        }
    }

    fn remember(&self, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.open.lock().unwrap().push(clone);
        }
    }
}

impl Link {
    /// Listens on a free loopback port and forwards every connection to `upstream` (`host:port`).
    pub fn to(upstream: &str) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the link's port");
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            cut: Mutex::new(false),
            restored: Condvar::new(),
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            accepted: Mutex::new(0),
        });
        let accepting = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                *accepting.accepted.lock().unwrap() += 1;
                let state = accepting.clone();
                thread::spawn(move || forward(state, client));
            }
        });
        Link { addr, state }
    }

    /// Cuts the link: nothing crosses it until [`Link::restore`].
    pub fn cut(&self) {
        *self.state.cut.lock().unwrap() = true;
    }

    /// Lets bytes through again, held ones first.
    pub fn restore(&self) {
        *self.state.cut.lock().unwrap() = false;
        self.state.restored.notify_all();
    }

    /// Closes every open connection (both ends); the link stays usable for new ones.
    pub fn reset(&self) {
        for stream in self.state.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        *self.state.accepted.lock().unwrap()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.restore();
        self.reset();
        // Wakes the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Connects to the upstream once the link is open and copies both ways until either side closes.
fn forward(state: Arc<State>, client: TcpStream) {
    state.remember(&client);
    state.wait_open();
    let Ok(server) = TcpStream::connect(&state.upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    state.remember(&server);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let upstream = {
        let state = state.clone();
        thread::spawn(move || copy(&state, client_read, server))
    };
    copy(&state, server_read, client);
    let _ = upstream.join();
}

/// Copies `from` to `to`, holding still while the link is cut; closes both when one side is done.
fn copy(state: &State, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        state.wait_open();
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // Bytes read just before a cut are delivered only after it, like packets in flight.
        state.wait_open();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server on loopback; returns its address.
    fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        stream.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_cut_holds_bytes_in_both_directions_and_a_restore_delivers_them_in_order() {
        let link = Link::to(&echo_server());
        let mut client = TcpStream::connect(&link.addr).unwrap();
        client.write_all(b"before").unwrap();
        assert_eq!(read_exactly(&mut client, 6), b"before");

        link.cut();
        client.write_all(b"during").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let silent = client.read(&mut byte);
        assert!(
            matches!(&silent, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "nothing crosses a cut link: {silent:?}"
        );
        link.restore();
        client.set_read_timeout(None).unwrap();
        assert_eq!(read_exactly(&mut client, 6), b"during");
        assert_eq!(link.accepted(), 1);
    }

    #[test]
    fn a_reset_closes_open_connections_and_new_ones_still_work() {
        let link = Link::to(&echo_server());
        let mut first = TcpStream::connect(&link.addr).unwrap();
        first.write_all(b"x").unwrap();
        assert_eq!(read_exactly(&mut first, 1), b"x");
        link.reset();
        let mut rest = Vec::new();
        let closed = first.read_to_end(&mut rest);
        assert!(closed.is_err() || rest.is_empty(), "{closed:?} {rest:?}");

        let mut second = TcpStream::connect(&link.addr).unwrap();
        second.write_all(b"y").unwrap();
        assert_eq!(read_exactly(&mut second, 1), b"y");
    }
}
