//! A throwaway PostgreSQL server for tests and benchmarks: `initdb` and
//! `postgres` from the installed server binaries, in a temp dir, on a free
//! loopback port, gone with its temp dir when the process that started
//! it is. PostgreSQL refuses to run as root, so as root it runs as the
//! `postgres` user (or `nobody`). With `CONSENTD_TEST_DATABASE_URL` set, that server is used
//! instead and nothing is started.
//!
//! Test support, not part of the release library: the library's unit tests,
//! the integration tests and the benches include this file by path.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The variable naming a server the tests may use instead of their own.
const TEST_DATABASE_URL: &str = "CONSENTD_TEST_DATABASE_URL";

/// The variable that gives a server's watchdog shell the temp dir to
/// remove once the test process is gone.
const WATCHDOG_DIR: &str = "CONSENTD_THROWAWAY_DIR";

/// `CONSENTD_TEST_DATABASE_URL`, if set.
pub fn test_database_url() -> Option<String> {
    std::env::var(TEST_DATABASE_URL)
        .ok()
        .filter(|u| !u.is_empty())
}

/// A PostgreSQL server of the test's own (or the one the environment names).
#[derive(Debug)]
pub struct Throwaway {
    /// `postgres://...` of the `postgres` database, for administration.
    base: String,
    port: u16,
    /// The running server (none for an external one).
    process: Mutex<Option<Child>>,
    start: Option<StartCommand>,
    /// Its temp dir: the data dir and the log.
    dir: Option<tempfile::TempDir>,
}

#[derive(Debug)]
struct StartCommand {
    postgres: PathBuf,
    data: PathBuf,
    log: PathBuf,
    user: Option<(u32, u32)>,
    /// More `-c name=value` settings.
    settings: Vec<String>,
}

static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// The uid and gid PostgreSQL runs as when this process is root.
fn unprivileged_user() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(2)?;
    if euid != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
    };
    find("postgres")
        .or_else(|| find("nobody"))
        .or(Some((65534, 65534)))
}

/// The directory of `initdb` and `postgres`: `CONSENTD_TEST_PG_BIN`, else
/// the newest `/usr/lib/postgresql/*/bin`, else the `PATH`.
fn binaries() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CONSENTD_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `sql` on `url` from a thread of its own (callable from anywhere,
/// async or not).
fn execute(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let conn = tokio::spawn(conn);
            let r = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = conn.await;
            r
        })
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_string())?
}

impl Throwaway {
    /// The server every test of this process shares, started on first use;
    /// `None` (with the reason on stderr, once) where none can run.
    pub fn shared() -> Option<&'static Throwaway> {
        static SHARED: OnceLock<Option<Throwaway>> = OnceLock::new();
        SHARED
            .get_or_init(|| match Throwaway::start() {
                Ok(t) => Some(t),
                Err(why) => {
                    eprintln!("SKIPPED: PostgreSQL tests: {why}");
                    None
                }
            })
            .as_ref()
    }

    /// Starts a server of its own, or adopts `CONSENTD_TEST_DATABASE_URL`.
    pub fn start() -> Result<Throwaway, String> {
        Self::start_with_tls(None)
    }

    /// [`Throwaway::start`], serving TLS with this PEM certificate and key
    /// when given (never for an external server).
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> Result<Throwaway, String> {
        if let Some(url) = test_database_url().filter(|_| tls.is_none()) {
            execute(&url, "SELECT 1").map_err(|e| format!("{TEST_DATABASE_URL}: {e}"))?;
            return Ok(Throwaway {
                base: url,
                port: 0,
                process: Mutex::new(None),
                start: None,
                dir: None,
            });
        }
        let bin = binaries().ok_or(
            "no PostgreSQL server binaries (initdb, postgres) are installed; \
             install the postgresql package or set CONSENTD_TEST_DATABASE_URL",
        )?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let user = unprivileged_user();
        let data = dir.path().join("pgdata");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            // The server's user owns the whole dir: its watchdog removes
            // it once this process is gone (see `start_server`).
            for d in [dir.path(), data.as_path()] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
        }
        let log = dir.path().join("postgres.log");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "consentd", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            std::os::unix::process::CommandExt::uid(&mut initdb, uid);
            std::os::unix::process::CommandExt::gid(&mut initdb, gid);
        }
        let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut settings = Vec::new();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).map_err(|e| e.to_string())?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| e.to_string())?;
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .map_err(|e| e.to_string())?;
                }
            }
            settings.push("ssl=on".to_owned());
        }
        let port = free_port().map_err(|e| e.to_string())?;
        let t = Throwaway {
            base: format!("postgres://consentd@127.0.0.1:{port}/postgres"),
            port,
            process: Mutex::new(None),
            start: Some(StartCommand {
                postgres: bin.join("postgres"),
                data,
                log,
                user,
                settings,
            }),
            dir: Some(dir),
        };
        t.start_server()?;
        Ok(t)
    }

    /// Starts (again) the server process over its data dir and port, and
    /// waits until it takes connections.
    pub fn start_server(&self) -> Result<(), String> {
        let Some(s) = &self.start else {
            return Err("an external server is not started by the tests".into());
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(|e| e.to_string())?;
        // The shell stops the server when this process is gone, however it
        // ends, or on SIGTERM from `stop_server`. Once this process is gone
        // it also removes the temp dir: a server in a static (`shared`) is
        // never dropped, and each one left its data dir behind (~110 MB,
        // 25 of them per `cargo test`).
        let watchdog = format!(
            r#""$0" "$@" & pg=$!
trap 'kill -INT $pg 2>/dev/null; wait $pg; exit 0' INT TERM
while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 0.2; done
kill -INT $pg 2>/dev/null; wait $pg
[ -d /proc/{parent} ] || rm -rf "${{{WATCHDOG_DIR}:?}}""#,
            parent = std::process::id()
        );
        let dir = s.data.parent().ok_or("the data dir has no parent")?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(watchdog)
            .arg(&s.postgres)
            .arg("-D")
            .arg(&s.data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "max_connections=400"])
            .args(s.settings.iter().flat_map(|kv| ["-c", kv.as_str()]))
            .env(WATCHDOG_DIR, dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if let Some((uid, gid)) = s.user {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        let child = command.spawn().map_err(|e| format!("postgres: {e}"))?;
        *self.process.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match execute(&self.base, "SELECT 1") {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
                    return Err(format!("postgres did not start: {e}\n{log}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the server (fast shutdown) and waits until it is gone.
    pub fn stop_server(&self) {
        let child = self
            .process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = child {
            // TERM, not INT: a shell started with SIGINT ignored (any
            // process run in the background by a non-interactive shell,
            // e.g. `cmd &` in a CI script) cannot trap INT. The shell's
            // trap then stops the server with INT (a fast shutdown).
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// The port it listens on (0 for an external server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its temp dir, holding the data dir and the log (none for an
    /// external server).
    pub fn temp_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Whether the tests can stop and start this server.
    pub fn can_restart(&self) -> bool {
        self.start.is_some()
    }

    /// A new, empty database; its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!(
            "consentd_t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        execute(&self.base, &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating the test database {name}: {e}"));
        self.url(&name)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        let (path, query) = match self.base.split_once('?') {
            Some((p, q)) => (p, format!("?{q}")),
            None => (self.base.as_str(), String::new()),
        };
        match path.rfind('/') {
            Some(i) if i > path.find("://").map_or(0, |s| s + 2) => {
                format!("{}/{name}{query}", &path[..i])
            }
            _ => format!("{path}/{name}{query}"),
        }
    }

    /// The log of a server this process started.
    pub fn log_path(&self) -> Option<&Path> {
        self.start.as_ref().map(|s| s.log.as_path())
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        self.stop_server();
    }
}
