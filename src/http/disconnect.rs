//! Noticing a client that hung up while its image is still being generated.
//!
//! actix-web keeps a request's handler running after the peer closes the
//! connection, so a waiter would hold its fal job alive until the job ends.
//! Instead, each connection's socket is remembered at accept time, and a
//! waiting handler watches a duplicate of it for end-of-file: when the client
//! is gone, the handler returns, its waiter leaves the flight, and the last
//! waiter leaving cancels the fal job.

use std::any::Any;
use std::future::Future;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use actix_web::HttpRequest;
use actix_web::dev::Extensions;

/// The raw socket of a client connection, recorded by [`on_connect`].
#[derive(Clone, Copy)]
struct PeerSocket(RawFd);

/// `HttpServer::on_connect` hook: remember the connection's socket.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        ext.insert(PeerSocket(tcp.as_raw_fd()));
    }
}

/// A future that resolves when the client of `req` closes its connection,
/// and never otherwise (nor when the socket is unknown, or the client sends
/// more bytes: a pipelining client is alive).
pub fn closed(req: &HttpRequest) -> impl Future<Output = ()> + Send + 'static {
    let watched = req.conn_data::<PeerSocket>().and_then(|peer| {
        // SAFETY: the fd belongs to the connection serving `req`, which the
        // server keeps open at least as long as this request is handled; it
        // is only duplicated here (the duplicate is owned and closed by us).
        let borrowed = unsafe { BorrowedFd::borrow_raw(peer.0) };
        let owned = borrowed.try_clone_to_owned().ok()?;
        let socket = std::net::TcpStream::from(owned);
        socket.set_nonblocking(true).ok()?;
        tokio::net::TcpStream::from_std(socket).ok()
    });
    async move {
        let Some(stream) = watched else {
            return std::future::pending().await;
        };
        let mut byte = [0u8; 1];
        match stream.peek(&mut byte).await {
            // End of file, or the connection broke: the client is gone.
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }
}
