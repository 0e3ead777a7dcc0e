//! `sluice run` as a background process, as a host of a pipeline runs it:
//! its output lines arrive timestamped on a channel, so the tests wait for
//! what the process says, never for a fixed time, and can signal it.

use crate::harness::sluice;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `sluice run` process whose output lines arrive, timestamped, on a
/// channel: the tests wait for a line, never for a fixed time.
pub struct Host {
    pub name: &'static str,
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Host {
    pub fn start(name: &'static str, config: &Path, env: &[(&str, &str)]) -> Host {
        let mut cmd = sluice(&["run", config.to_str().unwrap()]);
        cmd.envs(env.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send((Instant::now(), line));
                }
            });
        }
        Host { name, child, lines, seen: Vec::new() }
    }

    /// Wait (at most `within`) for a line containing `text`: when it came.
    pub fn wait_for(&mut self, text: &str, within: Duration) -> Option<Instant> {
        self.wait_line(text, within).map(|(at, _)| at)
    }

    /// Wait (at most `within`) for a line containing `text`: when it came,
    /// and the line.
    pub fn wait_line(&mut self, text: &str, within: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let hit = line.contains(text).then(|| line.clone());
                    self.seen.push(line);
                    if let Some(line) = hit {
                        return Some((at, line));
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Keep reading its output for `time` (a random moment to kill it at).
    pub fn watch(&mut self, time: Duration) {
        let deadline = Instant::now() + time;
        while let Ok((_, line)) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line);
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// The exit code, waiting at most `within`.
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok((_, line)) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Poll the process, collecting its output meanwhile.
            if let Ok((_, line)) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.seen.push(line);
            }
        }
    }

    pub fn output(&mut self) -> String {
        while let Ok((_, line)) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
