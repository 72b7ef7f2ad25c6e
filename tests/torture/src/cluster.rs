//! The broker side of a scenario: one nats-server, or a JetStream cluster of three
//! (each with its own store, routes to the other two, `--no_advertise` so clients only
//! know the URLs they were given) holding the stream with 3 replicas; and one proxy in
//! front of each server. The agent is given every proxy's URL (`nats.servers`, one
//! cluster), the driver's reader every server's.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::procs::{bind_low, Broker, BrokerKind, Proxy, ProxyMode, Res};

/// The nats-server(s) of a scenario.
pub struct Brokers {
    pub nodes: Vec<Broker>,
}

impl Brokers {
    pub fn start(kind: BrokerKind, dir: &Path, cluster: bool) -> Res<Brokers> {
        if !cluster {
            return Ok(Brokers {
                nodes: vec![Broker::start(kind, dir)?],
            });
        }
        let mut all = free_ports(6)?;
        let routes = all.split_off(3);
        let ports = all;
        let mut nodes = Vec::new();
        for i in 0..3 {
            let others: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats-route://127.0.0.1:{}", routes[j]))
                .collect();
            let extra = vec![
                "--server_name".into(),
                format!("n{i}"),
                "--cluster_name".into(),
                "torture".into(),
                "--cluster".into(),
                format!("nats-route://127.0.0.1:{}", routes[i]),
                "--routes".into(),
                others.join(","),
                "--no_advertise".into(),
            ];
            nodes.push(Broker::start_node(
                kind,
                dir,
                &format!("nats-n{i}"),
                ports[i],
                extra,
            )?);
        }
        let b = Brokers { nodes };
        b.create_r3_stream()?;
        Ok(b)
    }

    /// Every server's URL, comma-separated (the reader's).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(Broker::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every server is up.
    pub fn is_up(&self) -> bool {
        self.nodes.iter().all(Broker::is_up)
    }

    /// kill -9 of every server.
    pub fn kill9(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }

    pub fn restart(&mut self) -> Res<()> {
        self.kill9();
        self.restart_if_down()
    }

    /// Starts the servers that are down.
    pub fn restart_if_down(&mut self) -> Res<()> {
        for n in &mut self.nodes {
            n.restart_if_down()?;
        }
        Ok(())
    }

    /// The cluster's stream with 3 replicas, as the agent would create it otherwise
    /// (`create_stream` has no replicas key): waits for the meta leader.
    fn create_r3_stream(&self) -> Res<()> {
        let url = self.url();
        block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let r = async {
                    let js = jetstream::new(connect(&url).await?);
                    js.get_or_create_stream(stream::Config {
                        name: crate::scenario::STREAM.into(),
                        subjects: vec!["torture.>".into()],
                        storage: stream::StorageType::File,
                        duplicate_window: Duration::from_secs(120),
                        num_replicas: 3,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("create the R3 stream: {e}"))?;
                    Ok::<(), String>(())
                }
                .await;
                match r {
                    Ok(()) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        })
    }

    /// kill -9 of the stream's leader (asked of the servers with `$JS.API.STREAM.INFO`);
    /// its name (`n0`…), or why no leader was found within 20 s.
    pub fn kill_leader(&mut self) -> Res<String> {
        let url = self.url();
        let leader = block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = async {
                    let js = jetstream::new(connect(&url).await?);
                    let mut s = js
                        .get_stream(crate::scenario::STREAM)
                        .await
                        .map_err(|e| format!("stream: {e}"))?;
                    let info = s.info().await.map_err(|e| format!("stream info: {e}"))?;
                    info.cluster
                        .as_ref()
                        .and_then(|c| c.leader.clone())
                        .ok_or_else(|| "the stream has no leader".to_owned())
                }
                .await;
                match r {
                    Ok(l) => return Ok(l),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        })?;
        let i: usize = leader
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .filter(|i| *i < self.nodes.len())
            .ok_or_else(|| format!("unknown stream leader {leader:?}"))?;
        self.nodes[i].kill9();
        Ok(leader)
    }
}

/// `n` different free ports (bound together, then released: one at a time, the same
/// port can come back twice).
fn free_ports(n: usize) -> Res<Vec<u16>> {
    let ls: Vec<std::net::TcpListener> = (0..n).map(|_| bind_low()).collect::<Res<_>>()?;
    ls.iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| format!("port: {e}"))
        })
        .collect()
}

async fn connect(urls: &str) -> Res<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.parse().map_err(|e| format!("{u}: {e}")))
        .collect::<Res<_>>()?;
    tokio::time::timeout(Duration::from_secs(10), async_nats::connect(addrs))
        .await
        .map_err(|_| format!("connect to {urls}: timed out"))?
        .map_err(|e| format!("connect to {urls}: {e}"))
}

fn block_on<T>(f: impl std::future::Future<Output = Res<T>>) -> Res<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?
        .block_on(f)
}

/// One proxy in front of each server; faults act on all of them.
pub struct Proxies(Vec<Proxy>);

impl Proxies {
    pub fn start(brokers: &Brokers) -> Res<Proxies> {
        brokers
            .nodes
            .iter()
            .map(|b| Proxy::start(b.port))
            .collect::<Res<_>>()
            .map(Proxies)
    }

    /// The agent's `nats.servers`, TOML.
    pub fn servers_toml(&self) -> String {
        let urls: Vec<String> = self
            .0
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{}\"", p.port))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    pub fn set(&self, mode: ProxyMode) {
        for p in &self.0 {
            p.set(mode);
        }
    }

    pub fn mode(&self) -> ProxyMode {
        self.0.first().map_or(ProxyMode::Pass, Proxy::mode)
    }
}
