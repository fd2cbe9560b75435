//! Test helpers: a `ferry-broker` child process and a hand-written HTTP GET.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest any step of a test may take before it fails (a debug build opening RocksDB is well under a second).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A `ferry-broker` child process, with its stderr lines captured. Killed on drop if still running.
pub struct BrokerProcess {
    child: Child,
    lines: Receiver<String>,
    stderr_reader: Option<JoinHandle<()>>,
    /// Every stderr line read so far, for failure messages.
    pub log: Vec<String>,
}

impl BrokerProcess {
    /// Starts `ferry-broker` with text logs at `info` and the given arguments.
    pub fn start(args: &[&str]) -> BrokerProcess {
        BrokerProcess::spawn(args, None)
    }

    /// Starts a broker on `data_dir` (as [`BrokerProcess::start_on`]) with one more environment variable.
    pub fn start_with_env(data_dir: &Path, env: Option<(&str, &str)>) -> BrokerProcess {
        BrokerProcess::start_configured(data_dir, None, env)
    }

    /// Starts a broker on `data_dir` (as [`BrokerProcess::start_on`]) with a `--config` file if given, and one more
    /// environment variable if given.
    pub fn start_configured(data_dir: &Path, config: Option<&Path>, env: Option<(&str, &str)>) -> BrokerProcess {
        let data_dir = data_dir.to_str().expect("utf-8 temp path");
        let mut args = vec![
            "--data-dir",
            data_dir,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ];
        if let Some(config) = config {
            args.extend(["--config", config.to_str().expect("utf-8 temp path")]);
        }
        BrokerProcess::spawn(&args, env)
    }

    fn spawn(args: &[&str], env: Option<(&str, &str)>) -> BrokerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry-broker"));
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry-broker");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, lines) = channel();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        BrokerProcess { child, lines, stderr_reader: Some(stderr_reader), log: Vec::new() }
    }

    /// Starts a broker on `data_dir` with ephemeral ports for both listeners.
    pub fn start_on(data_dir: &Path) -> BrokerProcess {
        BrokerProcess::start_with_env(data_dir, None)
    }

    /// Waits for a stderr line containing `needle` and returns it; panics with the log so far after
    /// [`STEP_TIMEOUT`] or if the process closes stderr first.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(remaining) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no line containing {needle:?} in time; log: {:#?}", self.log),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("stderr closed before a line containing {needle:?}; log: {:#?}", self.log)
                }
            }
        }
    }

    /// Waits until the broker logs that it started (`true`) or until it exits first (`false`); panics after
    /// [`STEP_TIMEOUT`] without either.
    pub fn wait_until_started_or_exit(&mut self) -> bool {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let started = line.contains("broker started");
                    self.log.push(line);
                    if started {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("neither started nor exited in time; log: {:#?}", self.log),
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Waits until the broker is ready and returns the address of its metrics endpoint.
    pub fn wait_until_ready(&mut self) -> SocketAddr {
        let line = self.wait_for_line("metrics listening on ");
        let address = line.rsplit("metrics listening on ").next().expect("rsplit yields at least one part");
        let address = address.trim().parse().unwrap_or_else(|error| panic!("bad address in {line:?}: {error}"));
        self.wait_for_line("broker started");
        address
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not exited, been killed or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Moves the stderr lines that arrived into [`BrokerProcess::log`], keeping only the last `keep` lines: for a
    /// long run whose broker logs every connection it closes.
    pub fn trim_log(&mut self, keep: usize) {
        self.log.extend(self.lines.try_iter());
        let excess = self.log.len().saturating_sub(keep);
        self.log.drain(..excess);
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pids fit in pid_t");
        // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
        #[allow(unsafe_code)]
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    /// Waits (up to [`STEP_TIMEOUT`]) for the process to exit, then returns its status and its whole stderr log.
    pub fn wait_for_exit(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "ferry-broker did not exit in time; log: {:#?}", self.log);
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("stderr reader thread");
        }
        self.log.extend(self.lines.try_iter());
        (status, std::mem::take(&mut self.log))
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` over plain TCP with a hand-written HTTP/1.1 request; returns the status line and the body.
pub fn http_get(address: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&address, STEP_TIMEOUT).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(STEP_TIMEOUT)).expect("set read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {response:?}"));
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    (status_line, body.to_owned())
}
