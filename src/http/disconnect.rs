//! Noticing a client that hung up while its image is still being generated.
//!
//! actix-web keeps a request's handler running after the peer closes the
//! connection, so a waiter would hold its fal job alive until the job ends.
//! Instead, each connection's socket is remembered at accept time, and a
//! waiting handler watches a duplicate of it: when the client is gone, the
//! handler returns, its waiter leaves the flight, and the last waiter
//! leaving cancels the fal job.
//!
//! End-of-file alone does not mean gone: a client may half-close its socket
//! after sending its request and still read the answer. On end-of-file the
//! JSON path sends one interim `HTTP/1.1 100 Continue` (clients skip 1xx
//! answers they did not ask for): a socket the client closed answers it with
//! a reset (left as an error on our socket), a half-closed one takes it.
//! Only the reset counts as a hang-up.
//! A stream never gets the probe (its answer has begun): its keep-alive
//! comments meet the reset instead.
//!
//! The watch begins [`WATCH_AFTER`] into the wait: watching costs six system
//! calls (dup, non-blocking, epoll add, peek, epoll delete, close) and a
//! wake-up, and most answers that come quickly (a coalesced wait, a fast
//! model, a local backend) are done before then. A hang-up in that time is
//! noticed when the watch begins.

use std::future::Future;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;
use actix_web::http::Version;

/// The raw socket of a client connection, recorded by [`on_connect`].
#[derive(Clone, Copy)]
struct PeerSocket(RawFd);

/// The interim answer that tells a closed socket from a half-closed one.
const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How often a half-closed (or probed) socket is looked at again.
const RECHECK: Duration = Duration::from_millis(100);

/// How long a request waits before its client's socket is watched.
const WATCH_AFTER: Duration = Duration::from_millis(100);

/// The server's on-connect hook: remember the connection's socket.
pub fn on_connect(conn: &impl AsRawFd, ext: &mut Extensions) {
    ext.insert(PeerSocket(conn.as_raw_fd()));
}

/// How to tell a hang-up from a half-close at end-of-file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Nothing of the answer is written yet: probe with a `100 Continue`.
    BeforeAnswer,
    /// The answer has begun (a stream): wait for the reset its own writes
    /// provoke.
    DuringAnswer,
}

/// A future that resolves when the client of `req` has hung up, and never
/// otherwise (nor when the socket is unknown, the client sends more bytes
/// as a pipelining client does, or it only half-closed its socket).
pub fn closed(req: &HttpRequest, watch: Watch) -> impl Future<Output = ()> + Send + 'static {
    // An HTTP/1.0 client may not be sent a 1xx: its end-of-file is a hang-up.
    let probe = watch == Watch::BeforeAnswer && req.version() != Version::HTTP_10;
    let eof_is_hang_up = req.version() == Version::HTTP_10;
    let peer = req.conn_data::<PeerSocket>().copied();
    async move {
        tokio::time::sleep(WATCH_AFTER).await;
        let Some(stream) = peer.and_then(duplicate) else {
            return std::future::pending().await;
        };
        let mut byte = [0u8; 1];
        match stream.peek(&mut byte).await {
            // The connection broke: the client is gone.
            Err(_) => return,
            Ok(0) if eof_is_hang_up => return,
            Ok(0) => {}
            Ok(_) => return std::future::pending().await,
        }
        if probe {
            // Only once the kernel has sent everything actix wrote before
            // (an earlier answer on this connection), so the probe cannot
            // land inside it.
            let mut waits = 0;
            while unsent_bytes(&stream) > 0 && waits < 100 {
                tokio::time::sleep(RECHECK / 5).await;
                waits += 1;
            }
            // Still unsent after 2 s: the peer takes nothing, and the
            // kernel's retransmission timeout will break the connection.
            if waits < 100 {
                match stream.try_write(PROBE) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
        // After the client's end-of-file a reset no longer shows on reads:
        // it leaves an error on the socket.
        loop {
            tokio::time::sleep(RECHECK).await;
            if !matches!(stream.take_error(), Ok(None)) {
                return;
            }
        }
    }
}

/// A non-blocking duplicate of the connection's socket, registered with
/// this thread's runtime.
fn duplicate(peer: PeerSocket) -> Option<tokio::net::TcpStream> {
    // SAFETY: the fd belongs to the connection serving the request: the
    // future that calls this is polled only by that connection's handler or
    // answer, which the server drops before it closes the socket. It is
    // only duplicated here (the duplicate is owned and closed by us).
    let borrowed = unsafe { BorrowedFd::borrow_raw(peer.0) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    let socket = std::net::TcpStream::from(owned);
    socket.set_nonblocking(true).ok()?;
    tokio::net::TcpStream::from_std(socket).ok()
}

/// Bytes in the socket's send queue not yet acknowledged by the peer.
fn unsent_bytes(stream: &tokio::net::TcpStream) -> i32 {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for TCP) writes one int through the pointer.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc == 0 { queued } else { 0 }
}
