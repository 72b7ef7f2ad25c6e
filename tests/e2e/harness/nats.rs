//! A throwaway nats-server of the test's own, and a real JetStream consumer that reads
//! back what arrived.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server with JetStream on a random port, with its own store; killed on drop.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl Nats {
    pub fn start(dir: &Path) -> Nats {
        Self::start_with(dir, &[])
    }

    /// Starts one with extra arguments (`--auth TOKEN`, `--user U --pass P`).
    pub fn start_with(dir: &Path, args: &[&str]) -> Nats {
        let store = dir.join("nats-store");
        std::fs::create_dir_all(&store).unwrap();
        let mut n = Nats {
            child: None,
            port: 0,
            dir: dir.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        n.spawn(None);
        n
    }

    fn spawn(&mut self, port: Option<u16>) {
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        let mut child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js"])
            .args(&self.args)
            .arg("-sd")
            .arg(self.dir.join("nats-store"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start /usr/sbin/nats-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Listening for client connections on") {
                    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        self.port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("nats-server did not start");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): the agent sees the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server's process (SIGSTOP) or lets it go on (SIGCONT): its connections
    /// stay open and nothing is answered meanwhile (a stalled link).
    pub fn pause(&self, paused: bool) {
        if let Some(c) = &self.child {
            let sig = if paused { "-STOP" } else { "-CONT" };
            Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The port may take a moment to be free again.
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn(Some(port))));
            if r.is_ok() || Instant::now() > deadline {
                break;
            }
        }
        assert_eq!(self.port, port);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub subject: String,
    pub id: String,
    pub json: serde_json::Value,
}

impl Msg {
    /// The `after` (or `before` for deletes) image's field.
    pub fn field(&self, name: &str) -> &serde_json::Value {
        let img = if self.json["op"] == "d" {
            &self.json["before"]
        } else {
            &self.json["after"]
        };
        &img[name]
    }
}

/// Asserts there are no duplicate message ids or duplicate values of `field`.
pub fn assert_unique(msgs: &[Msg], field: &str) {
    let mut ids = HashSet::new();
    let mut vals = HashSet::new();
    for m in msgs {
        assert!(ids.insert(m.id.clone()), "duplicate Nats-Msg-Id {}", m.id);
        assert!(
            vals.insert(m.field(field).to_string()),
            "duplicate {field} {}",
            m.field(field)
        );
    }
}

/// The integer values of `field`, in stream order.
pub fn ints(msgs: &[Msg], field: &str) -> Vec<i64> {
    msgs.iter()
        .map(|m| {
            m.field(field)
                .as_i64()
                .unwrap_or_else(|| panic!("{field} in {}", m.json))
        })
        .collect()
}
