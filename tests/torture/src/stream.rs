//! Reads the scenario's stream with a real JetStream client, straight from the broker
//! (not through the proxy), in stream order, picking up where the last read ended.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use crate::procs::Res;

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct Msg {
    pub seq: u64,
    pub id: String,
    pub json: serde_json::Value,
}

/// The messages read so far, and the means to read more.
pub struct Reader {
    rt: tokio::runtime::Runtime,
    url: String,
    stream: String,
    pub msgs: Vec<Msg>,
}

impl Reader {
    pub fn new(url: &str, stream: &str) -> Res<Reader> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        Ok(Reader {
            rt,
            url: url.to_owned(),
            stream: stream.to_owned(),
            msgs: Vec::new(),
        })
    }

    /// Reads every message stored since the last read; returns how many were new.
    /// JetStream errors once connected (a cluster electing a leader: "no responders")
    /// are retried for up to 15 s; a server that cannot be reached is an error at once.
    pub fn poll(&mut self) -> Res<usize> {
        let from = self.msgs.last().map_or(1, |m| m.seq + 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let new = loop {
            match self.rt.block_on(read_from(&self.url, &self.stream, from)) {
                Ok(new) => break new,
                Err(e) if e.starts_with("connect to") || std::time::Instant::now() > deadline => {
                    return Err(e)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        };
        let n = new.len();
        self.msgs.extend(new);
        Ok(n)
    }
}

async fn read_from(url: &str, stream: &str, from: u64) -> Res<Vec<Msg>> {
    // Several servers (a cluster): comma-separated.
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.parse().map_err(|e| format!("{u}: {e}")))
        .collect::<Res<_>>()?;
    let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(addrs))
        .await
        .map_err(|_| format!("connect to {url}: timed out"))?
        .map_err(|e| format!("connect to {url}: {e}"))?;
    let js = jetstream::new(client);
    let mut s = match js.get_stream(stream).await {
        Ok(s) => s,
        // Not created yet by the agent.
        Err(_) => return Ok(Vec::new()),
    };
    let last = s
        .info()
        .await
        .map_err(|e| format!("stream info: {e}"))?
        .state
        .last_sequence;
    if last < from {
        return Ok(Vec::new());
    }
    let c = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create consumer: {e}"))?;
    let mut msgs = c.messages().await.map_err(|e| format!("consume: {e}"))?;
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .map_err(|_| format!("reading the stream stalled after sequence {from}"))?
            .ok_or("the stream's message feed ended")?
            .map_err(|e| format!("read: {e}"))?;
        let seq = m
            .info()
            .map_err(|e| format!("message info: {e}"))?
            .stream_sequence;
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&m.payload)
            .map_err(|e| format!("message {seq} is not JSON: {e}"))?;
        out.push(Msg { seq, id, json });
        if seq >= last {
            return Ok(out);
        }
    }
}
