//! Child processes of the benchmark: service instances (`kafka-delay run`)
//! and the raw copy (`kafka-delay-tools raw-copy`), each measured alike —
//! CPU (user + system, from `wait4`) and peak resident memory (`VmHWM`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_delay::config::Settings;

/// The service binary beside this tool (`target/<profile>/kafka-delay`), or
/// `KAFKA_DELAY_BIN`.
pub fn service_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("KAFKA_DELAY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("kafka-delay")
}

/// What a child cost, once it exited.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Cost {
    /// User + system CPU seconds over the child's life.
    pub cpu_seconds: f64,
    /// Peak resident set, MiB.
    pub peak_rss_mib: f64,
}

/// A measured child process.
pub struct Measured {
    child: Child,
    /// Highest `VmHWM` seen while it ran (the kernel forgets it at exit).
    peak_rss_mib: f64,
    pub port: Option<u16>,
}

impl Measured {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn new(child: Child, port: Option<u16>) -> Self {
        Self {
            child,
            peak_rss_mib: 0.0,
            port,
        }
    }

    /// Samples the peak resident set (call now and then while it runs).
    pub fn sample(&mut self) {
        self.peak_rss_mib = self.peak_rss_mib.max(status_mib(self.child.id(), "VmHWM:"));
    }

    /// Waits (up to `timeout`) for the child to exit by itself.
    pub fn wait_exit(mut self, timeout: Duration) -> anyhow::Result<Cost> {
        let deadline = Instant::now() + timeout;
        loop {
            self.sample();
            if let Some(cost) = self.reap(false)? {
                return Ok(cost);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "child did not finish in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> anyhow::Result<Cost> {
        self.sample();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(60))
    }

    /// `wait4` for the child: its rusage covers every thread it ran.
    fn reap(&mut self, block: bool) -> anyhow::Result<Option<Cost>> {
        let mut status = 0;
        // SAFETY: wait4 writes the zeroed rusage we pass for our own child.
        let (pid, usage) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let flags = if block { 0 } else { libc::WNOHANG };
            let pid = libc::wait4(self.child.id() as i32, &mut status, flags, &mut usage);
            (pid, usage)
        };
        if pid == 0 {
            return Ok(None);
        }
        anyhow::ensure!(pid > 0, "wait4 failed");
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Some(Cost {
            cpu_seconds: secs(usage.ru_utime) + secs(usage.ru_stime),
            // Not `ru_maxrss`: Linux carries the pre-exec high-water mark
            // (`exec_mmap` → `setmax_mm_hiwater_rss`: the forked copy of
            // this benchmark's own memory) into the child's maxrss, so it
            // reported the benchmark's size, not the service's.
            peak_rss_mib: self.peak_rss_mib,
        }))
    }
}

fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `kafka-delay run` for `settings`, serving metrics on a free port.
pub fn spawn_service(settings: &Settings) -> anyhow::Result<Measured> {
    let port = free_port()?;
    let mut settings = settings.clone();
    settings.http.enabled = true;
    settings.http.bind = format!("127.0.0.1:{port}");
    let mut command = Command::new(service_binary());
    command
        .arg("run")
        .envs(settings.env_overrides())
        .env("RUST_LOG", "error")
        .stdin(Stdio::null());
    // Diagnosis: KAFKA_DELAY_BENCH_LOG_DIR keeps each instance's log
    // (filter KAFKA_DELAY_BENCH_LOG, default info) as <dir>/<port>.log.
    if let Ok(dir) = std::env::var("KAFKA_DELAY_BENCH_LOG_DIR") {
        let filter = std::env::var("KAFKA_DELAY_BENCH_LOG").unwrap_or_else(|_| "info".into());
        let file = std::fs::File::create(PathBuf::from(dir).join(format!("{port}.log")))?;
        command.env("RUST_LOG", filter).stderr(file);
    }
    let child = command.spawn()?;
    Ok(Measured::new(child, Some(port)))
}

/// Starts the raw copy child (`kafka-delay-tools raw-copy`).
pub fn spawn_raw_copy(
    settings: &Settings,
    source: &str,
    dest: &str,
    records: usize,
) -> anyhow::Result<Measured> {
    let exe = match std::env::var("KAFKA_DELAY_TOOLS_BIN") {
        Ok(bin) => PathBuf::from(bin),
        Err(_) => std::env::current_exe()?,
    };
    let child = Command::new(exe)
        .args(["raw-copy", "--source", source, "--dest", dest])
        .args(["--records", &records.to_string()])
        .envs(settings.env_overrides())
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Measured::new(child, None))
}

/// GET `path` from a child's HTTP port.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Waits until every child answers `/readyz` with 200.
pub fn wait_ready(children: &mut [Measured], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let ready = children.iter().all(|c| {
            c.port
                .and_then(|p| get(p, "/readyz"))
                .is_some_and(|(s, _)| s == 200)
        });
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "service instances not ready in {timeout:?}"
        );
        for c in children.iter_mut() {
            c.sample();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the instances' consumer groups have settled: for every
/// source (`ingress`, each tier label) the partitions assigned over all
/// children add up to the topic's partition count, in two samples 500 ms
/// apart. Readiness alone is per instance: with several instances, later
/// joins still move partitions, and a run measured then measures the
/// rebalances.
pub fn wait_settled(
    children: &mut [Measured],
    expected: &[(String, f64)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut streak = 0;
    loop {
        let settled = expected.iter().all(|(source, count)| {
            let prefix = format!("kafka_delay_partitions_assigned{{source=\"{source}\"}}");
            metric_sum(children, &prefix) == *count
        });
        streak = if settled { streak + 1 } else { 0 };
        if streak >= 2 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "consumer groups not settled in {timeout:?}: {:?}",
            assignments(children)
        );
        for c in children.iter_mut() {
            c.sample();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sum over `children` of the metric lines starting with `prefix`.
pub fn metric_sum(children: &[Measured], prefix: &str) -> f64 {
    children
        .iter()
        .filter_map(|c| get(c.port?, "/metrics"))
        .flat_map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Each child's `partitions_assigned{source=…}` lines, for the report.
pub fn assignments(children: &[Measured]) -> Vec<String> {
    children
        .iter()
        .filter_map(|c| get(c.port?, "/metrics"))
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with("kafka_delay_partitions_assigned{"))
                .map(|l| {
                    l.trim_start_matches("kafka_delay_partitions_assigned{source=\"")
                        .replace("\"} ", "=")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// CPU time of some processes, sampled every 50 ms while a run goes on, so
/// that the CPU of a window (the steady state after the warm-up) can be told
/// apart from start-up and shutdown.
pub struct CpuTrace {
    /// (epoch ms, CPU seconds of the measured processes, of the broker)
    samples: Vec<(i64, f64, f64)>,
}

impl CpuTrace {
    /// Samples `pids` (and `broker`) until `done()` holds.
    pub fn record(pids: &[u32], broker: Option<u32>, mut done: impl FnMut() -> bool) -> Self {
        let cpu = |pids: &[u32]| {
            pids.iter()
                .map(|&p| crate::broker::cpu_seconds_of(p))
                .sum::<f64>()
        };
        let mut samples = Vec::new();
        loop {
            samples.push((
                kafka_delay::model::clock::wall_ms(),
                cpu(pids),
                broker.map_or(0.0, crate::broker::cpu_seconds_of),
            ));
            if done() {
                return Self { samples };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (process, broker) CPU seconds between epoch ms `from` and `to`,
    /// interpolated between samples.
    pub fn between(&self, from: i64, to: i64) -> (f64, f64) {
        let at = |t: i64| -> (f64, f64) {
            let s = &self.samples;
            match s.iter().position(|&(ts, _, _)| ts >= t) {
                None => s.last().map_or((0.0, 0.0), |x| (x.1, x.2)),
                Some(0) => (s[0].1, s[0].2),
                Some(i) => {
                    let (a, b) = (s[i - 1], s[i]);
                    let f = (t - a.0) as f64 / (b.0 - a.0).max(1) as f64;
                    (a.1 + (b.1 - a.1) * f, a.2 + (b.2 - a.2) * f)
                }
            }
        };
        let (p0, b0) = at(from);
        let (p1, b1) = at(to);
        (p1 - p0, b1 - b0)
    }
}
