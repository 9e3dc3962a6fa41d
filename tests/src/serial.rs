//! A real pty pair from socat: the gateway reads one end, the test writes the other.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `socat pty,raw,echo=0,link=DIR/ttyA pty,raw,echo=0,link=DIR/ttyB`: bytes written to `ttyB`
/// come out of `ttyA`. Killing socat closes both ptys; [`PtyPair::reopen`] makes a new pair at
/// the same paths. socat is killed on drop.
#[derive(Debug)]
pub struct PtyPair {
    dir: PathBuf,
    child: Option<Child>,
    writer: Option<std::fs::File>,
}

impl PtyPair {
    /// Whether socat is installed.
    pub fn available() -> bool {
        Command::new("socat")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts socat with its links in `dir` and waits until both exist.
    pub fn open(dir: &Path) -> PtyPair {
        let mut p = PtyPair {
            dir: dir.to_path_buf(),
            child: None,
            writer: None,
        };
        p.spawn();
        p
    }

    /// The end the gateway reads (`[[serial]] port`).
    pub fn gateway_end(&self) -> PathBuf {
        self.dir.join("ttyA")
    }

    /// The end the test writes.
    pub fn test_end(&self) -> PathBuf {
        self.dir.join("ttyB")
    }

    fn spawn(&mut self) {
        for link in [self.gateway_end(), self.test_end()] {
            let _ = std::fs::remove_file(link);
        }
        let child = Command::new("socat")
            .arg(format!(
                "pty,raw,echo=0,link={}",
                self.gateway_end().display()
            ))
            .arg(format!("pty,raw,echo=0,link={}", self.test_end().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn socat");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(self.gateway_end().exists() && self.test_end().exists()) {
            assert!(Instant::now() < deadline, "socat did not create its ptys");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.writer = Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(self.test_end())
                .expect("open the test end of the pty"),
        );
    }

    /// Writes bytes to the test end.
    pub fn write(&mut self, bytes: &[u8]) {
        let w = self.writer.as_mut().expect("pty pair is closed");
        w.write_all(bytes).expect("write to pty");
        w.flush().expect("flush pty");
    }

    /// Writes `bytes` paced like a serial line at `baud` (10 bits per byte), in small chunks.
    pub async fn write_at_baud(&mut self, bytes: &[u8], baud: u32) {
        let start = Instant::now();
        let mut sent = 0usize;
        for chunk in bytes.chunks(64) {
            self.write(chunk);
            sent += chunk.len();
            let due = start + Duration::from_secs_f64(sent as f64 * 10.0 / f64::from(baud));
            tokio::time::sleep_until(due.into()).await;
        }
    }

    /// Kills socat (SIGTERM), closing both ptys: the gateway's end sees a hangup.
    pub fn close(&mut self) {
        self.writer = None;
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// A new pty pair at the same paths.
    pub fn reopen(&mut self) {
        assert!(self.child.is_none(), "reopen: close it first");
        self.spawn();
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
