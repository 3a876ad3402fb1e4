//! A TCP link the test can break: a forwarding proxy between a client (an agent) and a server (the
//! controller) that can be cut like a network partition and restored.
//!
//! A cut stops forwarding in both directions without closing anything: the proxy stops reading, so
//! the kernels' buffers fill and the peers see silence, as when a route disappears. New connections
//! are accepted but not forwarded either. Restoring resumes every connection that both peers kept
//! open, with the bytes held in between delivered in order, and lets new connections through.
//! [`Link::hold_replies`] is a one-way partition: what clients send still arrives (new connections
//! included), what the server sends back is held until the restore. [`Link::reset`] is the other
//! fault: every open connection is closed at once.

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
    /// Which directions are held; guarded for the condition variable.
    held: Mutex<Held>,
    restored: Condvar,
    stopped: AtomicBool,
    /// Both ends of every connection, so a reset or the drop can close them.
    open: Mutex<Vec<TcpStream>>,
    /// Connections accepted over the link's life.
    accepted: Mutex<u64>,
}

/// A direction bytes cross the link in.
#[derive(Clone, Copy)]
enum Direction {
    /// Client to server.
    Requests,
    /// Server to client.
    Replies,
}

/// What the link holds back.
#[derive(Clone, Copy, Default)]
struct Held {
    requests: bool,
    replies: bool,
}

impl Held {
    fn holds(self, direction: Direction) -> bool {
        match direction {
            Direction::Requests => self.requests,
            Direction::Replies => self.replies,
        }
    }
}

impl State {
    /// Blocks while `direction` is held.
    fn wait_open(&self, direction: Direction) {
        let mut held = self.held.lock().unwrap();
        while held.holds(direction) && !self.stopped.load(Ordering::SeqCst) {
            held = self.restored.wait(held).unwrap();
        }
    }

    fn hold(&self, held: Held) {
        *self.held.lock().unwrap() = held;
        self.restored.notify_all();
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
            held: Mutex::new(Held::default()),
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
        self.state.hold(Held {
            requests: true,
            replies: true,
        });
    }

    /// Holds what the server sends until [`Link::restore`]; what clients send still crosses, on open
    /// connections and new ones (whose handshakes therefore stall halfway).
    pub fn hold_replies(&self) {
        self.state.hold(Held {
            requests: false,
            replies: true,
        });
    }

    /// Lets bytes through again, held ones first.
    pub fn restore(&self) {
        self.state.hold(Held::default());
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

/// Connects to the upstream once requests cross the link and copies both ways until either side
/// closes.
fn forward(state: Arc<State>, client: TcpStream) {
    state.remember(&client);
    state.wait_open(Direction::Requests);
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
        thread::spawn(move || copy(&state, Direction::Requests, client_read, server))
    };
    copy(&state, Direction::Replies, server_read, client);
    let _ = upstream.join();
}

/// Copies `from` to `to`, holding still while `direction` is held; closes both when one side is
/// done.
fn copy(state: &State, direction: Direction, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        state.wait_open(direction);
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // Bytes read just before a cut are delivered only after it, like packets in flight.
        state.wait_open(direction);
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
    fn held_replies_let_requests_through_and_arrive_after_the_restore() {
        // A server that reports what it received and answers each byte with its uppercase.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = listener.local_addr().unwrap().to_string();
        let (received_tx, received) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let received_tx = received_tx.clone();
                thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let (mut reader, mut byte) = (stream, [0u8; 1]);
                    while let Ok(1) = reader.read(&mut byte) {
                        let _ = received_tx.send(byte[0]);
                        let _ = writer.write_all(&byte.map(|b| b.to_ascii_uppercase()));
                    }
                });
            }
        });
        let link = Link::to(&upstream);
        let mut open = TcpStream::connect(&link.addr).unwrap();
        open.write_all(b"a").unwrap();
        assert_eq!(read_exactly(&mut open, 1), b"A");
        assert_eq!(received.recv().unwrap(), b'a');

        link.hold_replies();
        open.write_all(b"b").unwrap();
        // A connection made while replies are held reaches the server too.
        let mut new = TcpStream::connect(&link.addr).unwrap();
        new.write_all(b"c").unwrap();
        let wait = Duration::from_secs(10);
        let mut got = [
            received.recv_timeout(wait).unwrap(),
            received.recv_timeout(wait).unwrap(),
        ];
        got.sort();
        assert_eq!(&got, b"bc", "requests cross while replies are held");
        open.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let silent = open.read(&mut byte);
        assert!(
            matches!(&silent, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "no reply crosses: {silent:?}"
        );
        link.restore();
        open.set_read_timeout(None).unwrap();
        assert_eq!(read_exactly(&mut open, 1), b"B");
        assert_eq!(read_exactly(&mut new, 1), b"C");
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
