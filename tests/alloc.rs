#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bytes the gateway allocates per `b64_json` answer (issue 6: "no more than
//! one copy of each image's bytes per response beyond the socket write").
//!
//! Its own test binary with one test, because the counting allocator below is
//! process-wide: the gateway runs in this process (workers, upstream runtime,
//! cache), while fake-fal runs as a separate process and the HTTP client runs
//! on a thread that is left out of the count. So the figures are what the
//! gateway's own threads allocate, from reading the request to writing the
//! response into actix's socket buffer.
//!
//! Measured (1.5 MB PNG, 2.05 MB of base64): a miss allocates 2.09x the
//! image (fal's answer read into one buffer, plus hyper's read buffers), a
//! hit 0.004x (8.7 KB in 60 allocations). Before image bodies went to actix
//! in 64 KiB slices: 3.04x and 1.01x (actix's write buffer took each image
//! whole). Printed with `--nocapture`:
//! `cargo build -p fake-fal`, then `cargo test --test alloc -- --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use image_gateway::app::Application;
use image_gateway::config::{BackendChoice, Secret, Settings};

/// Allocations of at least this size are counted apart: image-sized buffers.
const LARGE: usize = 256 * 1024;

struct Counting;

static BYTES: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
static LARGE_BYTES: AtomicU64 = AtomicU64::new(0);
static LARGE_COUNT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the client's thread: its allocations are not the gateway's.
    static EXCLUDED: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    // During thread teardown the flag is gone: count (conservative).
    if EXCLUDED.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    BYTES.fetch_add(size as u64, Relaxed);
    COUNT.fetch_add(1, Relaxed);
    if size >= LARGE {
        LARGE_BYTES.fetch_add(size as u64, Relaxed);
        LARGE_COUNT.fetch_add(1, Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; the
// bookkeeping only touches atomics and a const thread-local `Cell`, neither
// of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    /// A growing realloc counts its whole new size: it may be a fresh block
    /// and a copy.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            count(new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Copy, Debug)]
struct Tally {
    bytes: u64,
    count: u64,
    large_bytes: u64,
    large_count: u64,
}

fn tally() -> Tally {
    Tally {
        bytes: BYTES.load(Relaxed),
        count: COUNT.load(Relaxed),
        large_bytes: LARGE_BYTES.load(Relaxed),
        large_count: LARGE_COUNT.load(Relaxed),
    }
}

fn since(before: Tally) -> Tally {
    let now = tally();
    Tally {
        bytes: now.bytes - before.bytes,
        count: now.count - before.count,
        large_bytes: now.large_bytes - before.large_bytes,
        large_count: now.large_count - before.large_count,
    }
}

/// The `fake-fal` binary (crates/fake-fal, another package of the
/// workspace, so cargo gives no `CARGO_BIN_EXE_` for it): next to the
/// gateway's own binary in the same target directory.
fn fake_fal_binary() -> PathBuf {
    let gateway = Path::new(env!("CARGO_BIN_EXE_image-gateway"));
    let fake = gateway
        .with_file_name("fake-fal")
        .with_extension(std::env::consts::EXE_EXTENSION);
    assert!(
        fake.is_file(),
        "{} is missing: build it with `cargo build -p fake-fal` (the same profile as \
         this test), or run the tests with `cargo test --workspace`, which builds it",
        fake.display()
    );
    fake
}

/// fake-fal as a process, with realistically large (~1.5 MB) PNGs.
struct Fake(Child, u16);

impl Fake {
    fn start() -> Self {
        let mut child = Command::new(fake_fal_binary())
            .args(["--no-record", "--noise", "7", "--workers", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        Fake(child, port)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A keep-alive HTTP/1.1 client on a plain socket: the answer's status, the
/// `x-cache` header and the base64 length of the first image.
struct Client {
    stream: BufReader<TcpStream>,
    body: Vec<u8>,
}

impl Client {
    fn post(&mut self, port: u16, prompt: &str) -> (u16, String, usize) {
        let body = format!(r#"{{"prompt":"{prompt}","response_format":"b64_json"}}"#);
        write!(
            self.stream.get_mut(),
            "POST /v1/images/generations HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut status = 0;
        let mut cache = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
                status = rest[..3].parse().unwrap();
            } else if let Some((name, value)) = line.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "x-cache" => cache = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        let b64 = json["data"][0]["b64_json"].as_str().map_or(0, str::len);
        (status, cache, b64)
    }
}

#[actix_web::test]
async fn b64_answers_allocate_about_one_image_copy_on_a_miss_and_little_on_a_hit() {
    image_gateway::install_crypto_provider();
    let fake = Fake::start();
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".into();
    s.server.workers = 1;
    s.backend = BackendChoice::Fal;
    s.fal.key = Some(Secret::new("alloc-test-key"));
    s.fal.queue_url = format!("http://127.0.0.1:{}", fake.1);
    s.fal.run_url = format!("http://127.0.0.1:{}/run", fake.1);
    s.log.level = "warn".into();
    s.database.url = image_gateway::config::DatabaseUrl::new("sqlite::memory:");
    let app = Application::build(s).unwrap();
    let port = app.port();
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());

    const N: usize = 10;
    let report = tokio::task::spawn_blocking(move || {
        EXCLUDED.set(true);
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut client = Client {
            stream: BufReader::with_capacity(256 * 1024, stream),
            body: Vec::new(),
        };
        // Warm up: pools, lazily built statics, metric label sets, moka.
        for i in 0..3 {
            client.post(port, &format!("warm {i}"));
            client.post(port, &format!("warm {i}"));
        }
        let before = tally();
        let mut image = 0;
        for i in 0..N {
            let (status, cache, len) = client.post(port, &format!("miss {i}"));
            assert_eq!((status, cache.as_str()), (200, "MISS"));
            image = len;
        }
        let miss = since(before);
        let before = tally();
        for i in 0..N {
            let (status, cache, _) = client.post(port, &format!("miss {}", i % 3));
            assert_eq!((status, cache.as_str()), (200, "HIT"));
        }
        let hit = since(before);
        (image, miss, hit)
    })
    .await
    .unwrap();
    handle.stop(false).await;

    let (image, miss, hit) = report;
    let per = |t: Tally| {
        let n = N as u64;
        (
            t.bytes / n,
            t.count / n,
            t.large_bytes / n,
            t.large_count as f64 / n as f64,
        )
    };
    let (mb, mc, mlb, mlc) = per(miss);
    let (hb, hc, hlb, hlc) = per(hit);
    let ratio = |b: u64| b as f64 / image as f64;
    println!("b64_json image: {image} bytes of base64 per response");
    println!(
        "miss: {mb} bytes in {mc} allocations per response = {:.3}x the image; \
         allocations >= 256 KiB: {mlc:.1} per response, {mlb} bytes ({:.3}x)",
        ratio(mb),
        ratio(mlb)
    );
    println!(
        "hit:  {hb} bytes in {hc} allocations per response = {:.3}x the image; \
         allocations >= 256 KiB: {hlc:.1} per response, {hlb} bytes ({:.3}x)",
        ratio(hb),
        ratio(hlb)
    );
    assert!(image > 1_000_000, "the fake's image is realistically large");
    // A miss reads fal's answer (the image plus a few hundred bytes of JSON)
    // into one buffer: the gateway's one copy. hyper's read buffers, in which
    // the answer's chunks arrive, add about one image-sized volume: the
    // socket read. Nothing else may copy the image (the answer goes to actix
    // in shared slices, so its socket write buffer stays small and reused).
    assert!(
        ratio(mb) < 2.5,
        "a miss allocates {:.2}x the image",
        ratio(mb)
    );
    // A hit shares the cached bytes: a few KiB of parsing and headers.
    assert!(
        ratio(hb) < 0.05,
        "a hit allocates {:.2}x the image",
        ratio(hb)
    );
}
