//! `fake-fal`: the loopback fal.ai stand-in of this crate as a process, for
//! the SDK end-to-end tests, the scripts and the benchmark. Prints
//! `listening on <port>` once it accepts connections; stops on Ctrl-C or
//! SIGINT.

use clap::Parser;
use fake_fal::{FakeConfig, FakeFal};

/// A fake fal.ai queue (and sync) server for tests and benchmarks. Prints
/// `listening on <port>` once ready.
#[derive(Parser)]
#[command(name = "fake-fal", version)]
struct Cli {
    /// Address to bind; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Milliseconds each job stays IN_QUEUE.
    #[arg(long, default_value_t = 0)]
    queue_ms: u64,
    /// Milliseconds each job stays IN_PROGRESS.
    #[arg(long, default_value_t = 0)]
    run_ms: u64,
    /// Do not record calls (for benchmarks: counts only).
    #[arg(long)]
    no_record: bool,
    /// Serve 1/16-size images (fast tests).
    #[arg(long)]
    small_images: bool,
    /// Pixel noise amplitude, making PNGs realistically large (0 = none;
    /// 7 gives a 1024x1024 PNG of about 1.5 MB).
    #[arg(long, default_value_t = 0)]
    noise: u8,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let config = FakeConfig {
        queue_ms: cli.queue_ms,
        run_ms: cli.run_ms,
        record: !cli.no_record,
        full_size_images: !cli.small_images,
        noise: cli.noise,
        ..FakeConfig::default()
    };
    actix_web::rt::System::new().block_on(async move {
        let fake = FakeFal::start(&cli.listen, config, cli.workers)?;
        println!("listening on {}", fake.port());
        tokio::signal::ctrl_c().await?;
        fake.stop().await;
        Ok(())
    })
}
