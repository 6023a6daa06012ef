//! A blocking HTTP/1.1 client for Volt's API socket, and a volt process to talk to.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One answer: status and body (parsed as JSON when there is one).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn fault(&self) -> String {
        self.body["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {:?}", self.body))
            .to_string()
    }

    /// Asserts a 400 whose fault message contains `needle`.
    #[track_caller]
    pub fn assert_refused(&self, needle: &str) {
        assert_eq!(self.status, 400, "{:?}", self.body);
        let fault = self.fault();
        assert!(fault.contains(needle), "{needle:?} not in {fault:?}");
    }
}

/// Sends one request on a fresh connection and reads the answer.
pub fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Answer {
    // The socket file appears at bind(), a moment before listen(): retry a refused connect.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match UnixStream::connect(sock) {
            Ok(stream) => break stream,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("connect to the API socket: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    read_answer(&mut BufReader::new(stream))
}

/// Reads one response from `reader`.
pub fn read_answer(reader: &mut impl BufRead) -> Answer {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("a status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).expect("a JSON body")
    };
    Answer { status, body }
}

/// A volt process with its stdout collected in the background.
pub struct VoltProcess {
    pub child: Child,
    pub sock: PathBuf,
    output: Arc<Mutex<Vec<u8>>>,
    errors: Arc<Mutex<Vec<u8>>>,
}

fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let output = Arc::new(Mutex::new(Vec::new()));
    let sink = output.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    output
}

impl VoltProcess {
    /// Starts `volt --api-sock SOCK` plus `args`, and waits for the socket to appear.
    pub fn start(sock: &Path, args: &[&str]) -> VoltProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_volt"))
            .arg("--api-sock")
            .arg(sock)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("volt starts");
        let output = collect(child.stdout.take().unwrap());
        let errors = collect(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                let err = String::from_utf8_lossy(&errors.lock().unwrap()).into_owned();
                panic!("volt exited ({status}) before creating its socket: {err}");
            }
            assert!(Instant::now() < deadline, "no API socket after 20 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        VoltProcess {
            child,
            sock: sock.to_path_buf(),
            output,
            errors,
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        call(&self.sock, method, path, body)
    }

    /// The guest's console output so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// What volt printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.errors.lock().unwrap()).into_owned()
    }

    /// Waits until the console output satisfies `done`, at most `limit`.
    pub fn wait_console(&mut self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.console();
            if done(&text) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "volt exited ({status}); console: {text}; stderr: {}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "console never got there: {text:?}; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process and returns its stderr.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(20));
        self.stderr()
    }

    /// Waits for the process to end by itself; returns its exit code, stderr and console.
    pub fn wait(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        (status.code(), self.stderr(), self.console())
    }
}

impl Drop for VoltProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
