//! Server-sent-event framing for fal's status stream: splitting events off
//! a buffer and joining their `data:` lines.

use bytes::{Bytes, BytesMut};

/// Largest status event kept while waiting for its end.
pub const MAX_SSE_EVENT_BYTES: usize = 1024 * 1024;

/// Split one complete server-sent event (up to a blank line) off `buf`.
pub fn next_sse_event(buf: &mut BytesMut) -> Option<Bytes> {
    let text = &buf[..];
    let (end, sep) = [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .filter_map(|sep| {
            text.windows(sep.len())
                .position(|w| w == *sep)
                .map(|i| (i, sep.len()))
        })
        .min()?;
    let event = buf.split_to(end + sep).freeze();
    Some(event.slice(..end))
}

/// The joined `data:` lines of an event; `None` for comments and empty events.
pub fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            let d = data.get_or_insert_with(Vec::new);
            if !d.is_empty() {
                d.push(b'\n');
            }
            d.extend_from_slice(rest);
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_and_their_data_joined() {
        let mut buf = BytesMut::from(&b": keep-alive\n\ndata: {\"status\":\"IN_QUEUE\"}\r\n\r\ndata: a\ndata: b\n\ndata: partial"[..]);
        let first = next_sse_event(&mut buf).unwrap();
        assert_eq!(event_data(&first), None);
        let second = next_sse_event(&mut buf).unwrap();
        assert_eq!(event_data(&second).unwrap(), br#"{"status":"IN_QUEUE"}"#);
        let third = next_sse_event(&mut buf).unwrap();
        assert_eq!(event_data(&third).unwrap(), b"a\nb");
        assert!(next_sse_event(&mut buf).is_none());
        assert_eq!(&buf[..], b"data: partial");
    }
}
