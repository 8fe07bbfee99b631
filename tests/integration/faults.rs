//! Fault injection for the never-stuck tests: a private broker the test may
//! stop, continue or restart (nisshi, in memory or on sqlite), service
//! instances as child processes (optionally with a shifted wall clock), and
//! an accounting of every record (lost, early, duplicates, lateness).
//!
//! Everything is loopback and bounded. Tests that need a private broker are
//! skipped when `KAFKA_BROKERS` points at an external cluster (they would
//! have to stop it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kafka_delay::config::Settings;

use crate::helpers::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_kafka-delay");

/// The service binary under test: this build's, or `KAFKA_DELAY_TEST_BIN`
/// (to run these scenarios against another build, e.g. the previous
/// release, and see them fail there).
pub fn service_binary() -> String {
    std::env::var("KAFKA_DELAY_TEST_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| BIN.to_owned())
}

/// Serializes the scenarios that run several instances: on a 2-core
/// machine two of them at once measure the machine, not the service.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True when the tests run against the user's cluster: broker faults are
/// skipped there.
pub fn external_cluster() -> bool {
    std::env::var("KAFKA_BROKERS").is_ok()
}

fn broker_binary() -> PathBuf {
    if let Ok(path) = std::env::var("KAFKA_DELAY_BROKER_BIN") {
        return PathBuf::from(path);
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|d| d.join("nisshi"))
        .find(|p| p.is_file())
        .expect("nisshi on PATH (make broker)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker owned by one test, on a fixed port so that it can be
/// restarted in place.
pub struct PrivateBroker {
    child: Option<Child>,
    port: u16,
    /// `memory://nisshi/` or `sqlite://FILE` (relative to `dir`).
    storage: String,
    dir: PathBuf,
    pub bootstrap: String,
}

impl PrivateBroker {
    /// In-memory storage.
    pub fn memory() -> Self {
        Self::start_with("memory://nisshi/".into(), std::env::temp_dir())
    }

    /// sqlite storage in a fresh directory: survives SIGKILL and restart.
    pub fn sqlite(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_with("sqlite://broker.db".into(), dir)
    }

    fn start_with(storage: String, dir: PathBuf) -> Self {
        let port = free_port();
        let mut broker = Self {
            child: None,
            port,
            storage,
            dir,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(broker_binary());
        cmd.current_dir(&self.dir)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .args(["--group-initial-rebalance-delay", "0s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("start nisshi"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.bootstrap).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGSTOP: the broker keeps its connections but answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// SIGCONT after [`PrivateBroker::pause`].
    pub fn resume(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// Stops the broker with `sig` (SIGTERM or SIGKILL), waits `down`, and
    /// starts it again on the same port and storage.
    pub fn restart(&mut self, sig: i32, down: Duration) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, sig);
            let _ = child.wait();
        }
        std::thread::sleep(down);
        self.spawn();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.storage.starts_with("sqlite") {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: sending a signal to a process this test started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A C shim, preloaded into a child, that shifts `CLOCK_REALTIME` by
/// `KD_CLOCK_OFFSET_MS`, or by the number in the file `KD_CLOCK_OFFSET_FILE`
/// (read again every 20 ms: a test steps the clock by writing it).
/// Monotonic clocks are left alone, as on a real host whose wall clock is
/// off or stepped; deadlines passed to `cnd_timedwait` (librdkafka computes
/// them on the wall clock) are shifted back, so that the kernel
/// waits as long as asked. Built once per test run with the system C
/// compiler.
fn clock_shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kd-clock-shim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("shim.c");
        let library = dir.join("libkdclock.so");
        std::fs::write(
            &source,
            r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <threads.h>
#include <unistd.h>
#include <stdlib.h>
#include <time.h>
#include <sys/time.h>

static int (*real)(clockid_t, struct timespec *);

static long long offset_ms(void) {
    static long long cached, read_at_ns = -1;
    const char *path = getenv("KD_CLOCK_OFFSET_FILE");
    if (!path) {
        const char *s = getenv("KD_CLOCK_OFFSET_MS");
        return s ? atoll(s) : 0;
    }
    struct timespec mono;
    real(CLOCK_MONOTONIC, &mono);
    long long ns = mono.tv_sec * 1000000000LL + mono.tv_nsec;
    long long last = __atomic_load_n(&read_at_ns, __ATOMIC_RELAXED);
    if (last < 0 || ns - last > 20000000LL) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            char buf[32];
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                __atomic_store_n(&cached, atoll(buf), __ATOMIC_RELAXED);
            }
        }
        __atomic_store_n(&read_at_ns, ns, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&cached, __ATOMIC_RELAXED);
}

static void shift(struct timespec *ts, long long ms) {
    long long ns = (long long)ts->tv_nsec + (ms % 1000) * 1000000LL;
    ts->tv_sec += ms / 1000 + ns / 1000000000LL;
    ns %= 1000000000LL;
    if (ns < 0) { ns += 1000000000LL; ts->tv_sec -= 1; }
    ts->tv_nsec = ns;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) shift(ts, offset_ms());
    return rc;
}

/* A deadline on the shifted wall clock, as librdkafka computes them for
   its condition variables (C11 threads), is waited for by the kernel on the
   real one: shifted back, as a host whose own clock is off would see it. */
int cnd_timedwait(cnd_t *cond, mtx_t *mutex, const struct timespec *abstime) {
    static int (*real_wait)(cnd_t *, mtx_t *, const struct timespec *);
    if (!real_wait) real_wait = dlsym(RTLD_NEXT, "cnd_timedwait");
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    struct timespec at = *abstime;
    shift(&at, -offset_ms());
    return real_wait(cond, mutex, &at);
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    (void)tz;
    return rc;
}
"#,
        )
        .unwrap();
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("cc (the C compiler) for the clock shim");
        assert!(status.success(), "building the clock shim failed");
        library
    })
}

/// A `kafka-delay run` child process, serving its probes and metrics on a
/// port of its own.
/// An instance restarted whenever it exits, as an orchestrator would (the
/// service exits on purpose after a fatal producer error, e.g. a broker's
/// `OutOfOrderSequenceNumber` under load); see [`Instance::supervise`].
pub struct Supervised {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(Instance, usize)>,
}

impl Supervised {
    /// Stops supervising; returns the instance and how often it restarted.
    pub fn stop(self) -> (Instance, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("supervisor")
    }
}

pub struct Instance {
    child: Option<Child>,
    settings: Settings,
    clock_offset_ms: i64,
    /// A file holding the wall clock's offset, ms (the test steps it).
    clock_file: Option<PathBuf>,
    /// A program and its arguments that run the service (valgrind).
    wrapper: Vec<String>,
    pub name: &'static str,
    pub http: String,
}

impl Instance {
    /// Restarts the instance whenever it exits, until [`Supervised::stop`].
    pub fn supervise(mut self) -> Supervised {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut restarts = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let exited = self
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some());
                if exited {
                    eprintln!("{} exited; restarting it", self.name);
                    self.child = None;
                    self.spawn();
                    restarts += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (self, restarts)
        });
        Supervised { stop, handle }
    }

    /// Starts an instance configured through environment overrides only.
    pub fn start(name: &'static str, settings: &Settings) -> Self {
        Self::start_skewed(name, settings, 0)
    }

    /// Starts an instance whose wall clock is `offset_ms` off (negative:
    /// behind).
    pub fn start_skewed(name: &'static str, settings: &Settings, offset_ms: i64) -> Self {
        Self::start_with(name, settings, offset_ms, &[])
    }

    /// Starts an instance whose wall clock is off by the number of ms in
    /// `file`, read again every 20 ms ([`set_clock_offset`] steps it).
    pub fn start_stepped(name: &'static str, settings: &Settings, file: &Path) -> Self {
        let mut instance = Self::unspawned(name, settings, 0, &[]);
        instance.clock_file = Some(file.to_owned());
        instance.spawn();
        instance
    }

    /// Starts an instance run by `wrapper` (a program and its arguments,
    /// e.g. valgrind), which is given the service's command line.
    pub fn start_wrapped(name: &'static str, settings: &Settings, wrapper: &[&str]) -> Self {
        Self::start_with(name, settings, 0, wrapper)
    }

    fn start_with(
        name: &'static str,
        settings: &Settings,
        offset_ms: i64,
        wrapper: &[&str],
    ) -> Self {
        let mut instance = Self::unspawned(name, settings, offset_ms, wrapper);
        instance.spawn();
        instance
    }

    fn unspawned(
        name: &'static str,
        settings: &Settings,
        offset_ms: i64,
        wrapper: &[&str],
    ) -> Self {
        let http = format!("127.0.0.1:{}", free_port());
        let mut settings = settings.clone();
        settings.http.enabled = true;
        settings.http.bind = http.clone();
        Self {
            child: None,
            settings,
            clock_offset_ms: offset_ms,
            clock_file: None,
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
            name,
            http,
        }
    }

    fn spawn(&mut self) {
        let binary = service_binary();
        // Another build (KAFKA_DELAY_TEST_BIN) may predate some keys.
        let other = binary != BIN;
        let env = self.settings.env_overrides().into_iter().filter(|(k, _)| {
            let new_keys = [
                "MAX_CLOCK_SKEW",
                "TOPICS__CLOCK",
                "WHEEL__CLOCK",
                "PREVIOUS_TIER_PREFIXES",
                "SLOT_ORDER",
            ];
            !(other && new_keys.iter().any(|new| k.ends_with(new)))
        });
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("run")
            .envs(env)
            .env(
                "RUST_LOG",
                std::env::var("KD_TEST_LOG").unwrap_or("error".into()),
            )
            .stdin(Stdio::null());
        // KD_TEST_LOG_DIR=dir keeps each instance's log in dir/NAME.log.
        if let Ok(dir) = std::env::var("KD_TEST_LOG_DIR") {
            let path = std::path::Path::new(&dir).join(format!(
                "{}{}.log",
                self.settings.topics.tier_prefix, self.name
            ));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            cmd.stderr(file);
        }
        if self.clock_offset_ms != 0 {
            cmd.env("LD_PRELOAD", clock_shim())
                .env("KD_CLOCK_OFFSET_MS", self.clock_offset_ms.to_string());
        }
        if let Some(file) = &self.clock_file {
            cmd.env("LD_PRELOAD", clock_shim())
                .env("KD_CLOCK_OFFSET_FILE", file);
        }
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn kafka-delay"));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Waits (up to `timeout`) until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            http_get(&self.http, "/readyz").is_some_and(|(status, _)| status == 200)
        });
        assert!(ok, "{} not ready within {timeout:?}", self.name);
    }

    /// The value of metric line `name` (exact text before the value), if served.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&self.http, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    /// SIGSTOP (a zombie member: holds its partitions, answers nothing).
    pub fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// SIGCONT after [`Instance::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// SIGKILL, then start again with the same configuration.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, wait for a clean exit, start again with the same configuration.
    pub fn terminate_and_restart(&mut self) {
        self.terminate();
        self.spawn();
    }

    /// SIGTERM and wait (up to 30 s) for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(status) = self.terminate_within(Duration::from_secs(30)) {
            assert!(status.success(), "{}: exit status {status:?}", self.name);
        }
    }

    /// SIGTERM and wait up to `timeout` for the exit; its status (None if
    /// the instance was not running).
    pub fn terminate_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            assert!(
                Instant::now() < deadline,
                "{}: no exit within {timeout:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child.id() as i32, libc::SIGCONT);
        }
        self.kill();
    }
}

/// What happened to `n` numbered records `v0..v{n}`: every record is found
/// (possibly more than once) or lost; arrivals before their due time are
/// early. Lateness is on the reader's clock.
#[derive(Debug)]
pub struct Account {
    pub sent: usize,
    pub delivered: usize,
    pub lost: Vec<usize>,
    pub early: usize,
    pub duplicates: usize,
    pub lateness_ms: Vec<i64>,
}

impl Account {
    /// Accounts for `arrivals`; records the reader missed are looked up
    /// again in `target` from the beginning, so that a reader's skip is not
    /// counted as a loss.
    pub fn of(settings: &Settings, target: &str, arrivals: &[Arrival], n: usize) -> Self {
        let mut seen = count_values(arrivals);
        let missing = (0..n).any(|i| !seen.contains_key(&format!("v{i}")));
        if missing {
            for a in read_all(settings, target) {
                seen.entry(a.value()).or_insert(1);
            }
        }
        let lost: Vec<usize> = (0..n)
            .filter(|i| !seen.contains_key(&format!("v{i}")))
            .collect();
        let mut lateness_ms = Vec::new();
        let mut early = 0;
        for a in arrivals {
            let Some(scheduled) = a.header(kafka_delay::model::envelope::SCHEDULED_AT) else {
                continue;
            };
            let late = a.seen_ms - scheduled.parse::<i64>().unwrap();
            early += usize::from(late < 0);
            lateness_ms.push(late);
        }
        lateness_ms.sort_unstable();
        let delivered = seen.len();
        Self {
            sent: n,
            delivered,
            lost,
            early,
            duplicates: arrivals.len().saturating_sub(delivered),
            lateness_ms,
        }
    }

    pub fn report(&self, scenario: &str) {
        println!(
            "{scenario}: sent {} delivered {} lost {} early {} duplicates {} \
             lateness ms p50 {} p99 {} max {}",
            self.sent,
            self.delivered,
            self.lost.len(),
            self.early,
            self.duplicates,
            percentile(&self.lateness_ms, 0.5),
            percentile(&self.lateness_ms, 0.99),
            percentile(&self.lateness_ms, 1.0),
        );
    }

    /// Lost 0, early 0, worst lateness within `bound_ms`.
    pub fn assert_ok(&self, scenario: &str, bound_ms: i64) {
        self.report(scenario);
        assert!(
            self.lost.is_empty(),
            "{scenario}: {} of {} records lost: {:?}",
            self.lost.len(),
            self.sent,
            &self.lost[..self.lost.len().min(20)]
        );
        assert_eq!(self.early, 0, "{scenario}: records delivered early");
        let worst = percentile(&self.lateness_ms, 1.0);
        assert!(
            worst <= bound_ms,
            "{scenario}: worst lateness {worst} ms exceeds {bound_ms} ms"
        );
    }
}

/// Every record of `topic`, read from the beginning with a fresh group.
pub fn read_all(settings: &Settings, topic: &str) -> Vec<Arrival> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let mut s = settings.clone();
    s.kafka.group_id = format!("{}recount-{}", settings.topics.tier_prefix, now_ms());
    let consumer: BaseConsumer = kafka_delay::kafka::consumer_config(&s, &s.kafka.group_id, true)
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let mut eofs = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut partitions = None;
    while Instant::now() < deadline {
        if partitions.is_none() {
            partitions = consumer
                .assignment()
                .ok()
                .map(|a| a.count())
                .filter(|&c| c > 0);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => out.push(Arrival {
                msg: msg.detach(),
                seen_ms: now_ms(),
            }),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eofs.insert(p);
            }
            _ => {}
        }
        if partitions.is_some_and(|n| eofs.len() >= n) {
            break;
        }
    }
    let _ = consumer.position().map(|p| p.count());
    out.retain(|a| a.msg.topic() == topic);
    out
}

fn now_ms() -> i64 {
    kafka_delay::model::clock::wall_ms()
}

/// Sets the wall-clock offset (ms) of instances started with
/// [`Instance::start_stepped`] on `file`: a step of their clock.
pub fn set_clock_offset(file: &Path, offset_ms: i64) {
    let staged = file.with_extension("next");
    std::fs::write(&staged, offset_ms.to_string()).unwrap();
    std::fs::rename(&staged, file).unwrap();
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}
