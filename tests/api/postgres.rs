//! A real PostgreSQL server for the tests that need one: `initdb` in a
//! temporary directory, `postgres` on a free loopback port with password
//! authentication, stopped (and its files removed) on drop. PostgreSQL
//! refuses to run as root, so as root the server runs as the `postgres`
//! user that Debian's package creates.
//!
//! Without the binaries these tests say so and pass, unless
//! `IMAGE_GATEWAY_REQUIRE_POSTGRES` is set (scripts/test sets it, so CI
//! cannot skip them silently).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The password of the `gateway` user; tests check it never leaks.
pub const PG_PASSWORD: &str = "pg-pass-SECRET-4242";

pub struct PostgresServer {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    owner: Option<(u32, u32)>,
    stopped: bool,
}

/// The newest installed PostgreSQL's `bin` directory.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// uid and gid of the `postgres` user, when running as root.
fn owner() -> Option<(u32, u32)> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((
        id("-u").expect("as root, PostgreSQL needs the `postgres` user"),
        id("-g")?,
    ))
}

fn chown_all(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_all(&e.unwrap().path(), (uid, gid));
        }
    }
}

impl PostgresServer {
    /// Start one, or `None` (with a message) when PostgreSQL is not
    /// installed and the environment does not require it.
    pub async fn start() -> Option<PostgresServer> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("IMAGE_GATEWAY_REQUIRE_POSTGRES").is_none(),
                "IMAGE_GATEWAY_REQUIRE_POSTGRES is set but PostgreSQL is not installed (scripts/setup-test-deps installs it)"
            );
            eprintln!("SKIPPED: PostgreSQL is not installed; the PostgreSQL tests did not run");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let owner = owner();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        if let Some(o) = owner {
            chown_all(dir.path(), o);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PostgresServer {
            port,
            bin,
            dir,
            owner,
            stopped: false,
        };
        let data = server.dir.path().join("data");
        let status = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "gateway", "-A", "scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        let log = server.dir.path().join("log");
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            server.dir.path().display()
        );
        let status = server
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(
            status.success(),
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(server)
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c.current_dir(self.dir.path());
        c
    }

    /// The URL of database `db` (made by [`Self::create_database`]).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://gateway:{PG_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// A fresh, empty database.
    pub async fn create_database(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        self.url(name)
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait until `check` passes (up to `within`).
pub async fn within(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened within {within:?}: {what}");
}
