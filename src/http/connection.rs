//! One client connection's socket, as the HTTP server reads and writes it:
//!
//! - a **write timeout**: when the client stops reading, the kernel's
//!   buffers fill and writes stall; a write stalled for
//!   `server.client_write_timeout_seconds` fails, so the server closes the
//!   connection and lets go of the answer it was writing (and its memory);
//! - **OpenAI-shaped protocol errors**: answers the HTTP server makes itself
//!   before any handler runs (400 for a request that is not HTTP, 408 for a
//!   request head not sent in time, 431 for one too large) have no body and
//!   no `x-request-id`; as the first answer on a connection they are
//!   replaced by the same status with OpenAI's error JSON and a request id.
//!   (On a later request of a keep-alive connection they pass as they are:
//!   telling answers apart there would mean parsing every answer.)

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A client connection's socket with a write timeout and shaped protocol
/// errors.
pub struct ClientIo {
    inner: TcpStream,
    write_timeout: Duration,
    /// Running while a write is stalled.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Counts connections closed by the write timeout.
    timeouts: IntCounter,
    /// Nothing written yet: the first answer may be a protocol error.
    first: bool,
    /// A shaped error answer being written in place of the server's own.
    replacement: Option<Bytes>,
}

/// The local address a client connected to (a request extension set per
/// connection): where image links point when `server.public_base_url` is
/// empty and forwarded headers are not trusted.
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub std::net::SocketAddr);

impl ClientIo {
    /// The local half of the connection.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    pub fn new(inner: TcpStream, write_timeout: Duration, timeouts: IntCounter) -> Self {
        Self {
            inner,
            write_timeout,
            stalled: None,
            timeouts,
            first: true,
            replacement: None,
        }
    }

    /// A write made no progress: start (or keep) the clock, and fail the
    /// write once it runs out.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.write_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timeouts.inc();
                tracing::debug!("client stopped reading its answer: connection closed");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Write out a pending replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.replacement.as_mut() {
            if rest.is_empty() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.stalled = None;
                    let _ = rest.split_to(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.stall(cx),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsRawFd for ClientIo {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_replacement(cx))?;
        if std::mem::take(&mut this.first)
            && let Some(shaped) = shape_protocol_error(buf)
        {
            this.replacement = Some(shaped);
            // The server's own bytes count as written; ours go instead.
            return match this.poll_replacement(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.stalled = None;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.stall(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The OpenAI-shaped replacement of an answer the HTTP server made itself
/// (an error status with no body and no `x-request-id`), or `None` for
/// anything else, which passes untouched.
fn shape_protocol_error(buf: &[u8]) -> Option<Bytes> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    // The whole answer is its head: no body, nothing after it.
    if head_end + 4 != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    if status < 400 {
        return None;
    }
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        if name == "x-request-id" || (name == "content-length" && value.trim() != "0") {
            return None;
        }
    }
    let (message, kind, code) = match status {
        400 => (
            "The request is not valid HTTP/1.1.",
            "invalid_request_error",
            "invalid_http_request",
        ),
        408 => (
            "The request head was not received in time.",
            "invalid_request_error",
            "request_timeout",
        ),
        413 => (
            "The request is too large.",
            "invalid_request_error",
            "request_too_large",
        ),
        431 => (
            "The request head (its headers) is too large.",
            "invalid_request_error",
            "request_header_fields_too_large",
        ),
        s if s >= 500 => (
            "The gateway could not handle the connection.",
            "server_error",
            "internal_error",
        ),
        _ => (
            "The request could not be handled.",
            "invalid_request_error",
            "invalid_http_request",
        ),
    };
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string();
    let reason = status_line.get(13..).unwrap_or("").trim();
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\nx-should-retry: false\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        super::middleware::new_request_id(),
    );
    Some(Bytes::from(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_error_answers_get_openai_bodies_and_request_ids() {
        for (raw, status, code) in [
            (
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: Mon, 30 Nov 2026 12:00:00 GMT\r\n\r\n",
                400,
                "invalid_http_request",
            ),
            (
                "HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
                408,
                "request_timeout",
            ),
            (
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
                431,
                "request_header_fields_too_large",
            ),
        ] {
            let shaped = shape_protocol_error(raw.as_bytes()).unwrap();
            let text = std::str::from_utf8(&shaped).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            assert!(text.contains("\r\nx-request-id: req_"), "{text}");
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"]["code"], code);
            assert!(json["error"]["message"].as_str().unwrap().len() > 10);
        }
    }

    #[test]
    fn the_gateways_own_answers_pass_untouched() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: req_1\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore",
            "HTTP/1.1 400 Bad Req",
            "garbage",
        ] {
            assert!(shape_protocol_error(raw.as_bytes()).is_none(), "{raw}");
        }
    }
}
