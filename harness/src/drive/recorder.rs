//! How the source reaches the destination: directly, through recording
//! proxies (so RAMBlocks can be checked against a replay of the wire bytes),
//! or through a proxy that damages the first connection. Recordings (both
//! directions of every connection) can be kept for `crossmig analyze`.

use std::path::PathBuf;

use anyhow::Result;

use std::sync::Arc;

use crate::defects::channel::Shared;
use crate::defects::mutation::Mutation;
use crate::defects::proxy::DefectProxy;
use crate::drive::proxy::{Proxy, ProxyHandle, ProxyPlan};
use crate::verify::stream::Replay;

/// Connections recorded per proxy: main, up to 8 multifd channels, preempt,
/// and spare ones (later connections are forwarded unrecorded).
pub const CONNECTIONS: usize = 12;

/// Recording proxies in front of the destination; the recordings are
/// removed on drop.
pub struct Recorder {
    pub dir: PathBuf,
    pub tag: String,
    pub proxies: Vec<Proxy>,
    /// One file per planned connection ([`CONNECTIONS`] per proxy), in order.
    pub files: Vec<PathBuf>,
    /// The return path (destination → source) of each planned connection,
    /// `<tag>-rec<k>-conn<c>.rp.bin`.
    pub rp_files: Vec<PathBuf>,
    /// Move the non-empty recordings here on drop (for `crossmig analyze`)
    /// instead of removing them.
    pub keep: Option<PathBuf>,
}

impl Recorder {
    /// Recordings go to `dir/<tag>-rec<k>-conn<c>.bin`.
    pub fn new(dir: impl Into<PathBuf>, tag: impl Into<String>) -> Recorder {
        Recorder {
            dir: dir.into(),
            tag: tag.into(),
            proxies: Vec::new(),
            files: Vec::new(),
            rp_files: Vec::new(),
            keep: None,
        }
    }

    /// A new recording proxy to a destination listening on `port`; returns
    /// the URI the source should connect to.
    pub async fn uri_for(&mut self, port: u16) -> Result<String> {
        let k = self.proxies.len();
        let plans: Vec<ProxyPlan> = (0..CONNECTIONS)
            .map(|c| {
                let f = self.dir.join(format!("{}-rec{k}-conn{c}.bin", self.tag));
                let rp = self.dir.join(format!("{}-rec{k}-conn{c}.rp.bin", self.tag));
                self.files.push(f.clone());
                self.rp_files.push(rp.clone());
                ProxyPlan::new().on_connection(c).record(f).record_return(rp)
            })
            .collect();
        let p = Proxy::start_plans("127.0.0.1:0", ([127, 0, 0, 1], port).into(), plans).await?;
        let uri = p.uri();
        self.proxies.push(p);
        Ok(uri)
    }

    /// Replay everything recorded (see [`Replay::from_recordings`]).
    pub fn replay(&self) -> Result<Replay> {
        Replay::from_recordings(&self.files)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.proxies.clear();
        if let Some(keep) = &self.keep {
            let _ = std::fs::create_dir_all(keep);
        }
        for f in self.files.iter().chain(&self.rp_files) {
            let non_empty = std::fs::metadata(f).is_ok_and(|m| m.len() > 0);
            if let (Some(keep), true, Some(name)) = (&self.keep, non_empty, f.file_name()) {
                let to = keep.join(name);
                if std::fs::rename(f, &to).is_ok() || std::fs::copy(f, &to).is_ok() {
                    let _ = std::fs::remove_file(f);
                    continue;
                }
            }
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The path from the source to the destination.
#[derive(Default)]
pub enum Route {
    /// `tcp:127.0.0.1:<port>` straight to the destination.
    #[default]
    Direct,
    /// Every connection (also recovery) through a new recording proxy.
    Record(Recorder),
    /// The first connection through a proxy with this plan (stall, throttle,
    /// cut); later (recovery) connections through a new plain proxy. Earlier
    /// proxies live on until the route is dropped, so a partitioned
    /// connection stays silent (not closed) after a recovery, as after a
    /// real network partition.
    Proxy { plan: Option<ProxyPlan>, proxies: Vec<Proxy>, handle: Option<ProxyHandle> },
    /// Every connection through a defect proxy applying one mutation to the
    /// main channel; `rec` holds what the source sent, before the change.
    /// `delivered` holds the main channel as the destination got it.
    Mutate {
        proxies: Vec<DefectProxy>,
        rec: Recorder,
        delivered: Recorder,
        mutation: Mutation,
        shared: Arc<Shared>,
    },
}

impl Route {
    /// A route through defect proxies applying `mutation`; recordings in `dir`.
    pub fn mutate(
        dir: &std::path::Path,
        tag: &str,
        mutation: Mutation,
        shared: Arc<Shared>,
    ) -> Route {
        Route::Mutate {
            proxies: Vec::new(),
            rec: Recorder::new(dir, tag),
            delivered: Recorder::new(dir, tag),
            mutation,
            shared,
        }
    }

    /// A route through a proxy whose first connection follows `plan`.
    pub fn proxy(plan: ProxyPlan) -> Route {
        Route::Proxy { plan: Some(plan), proxies: Vec::new(), handle: None }
    }

    /// The URI the source should use for a destination listening on `port`.
    pub async fn uri_for(&mut self, port: u16) -> Result<String> {
        match self {
            Route::Direct => Ok(format!("tcp:127.0.0.1:{port}")),
            Route::Record(r) => r.uri_for(port).await,
            Route::Proxy { plan, proxies, handle } => {
                let p = plan.take().unwrap_or_default();
                let px = Proxy::start("127.0.0.1:0", ([127, 0, 0, 1], port).into(), p).await?;
                let uri = px.uri();
                *handle = Some(px.handle());
                proxies.push(px);
                Ok(uri)
            }
            Route::Mutate { rec, delivered, mutation, shared, proxies } => {
                let k = proxies.len();
                let files: Vec<PathBuf> = (0..CONNECTIONS)
                    .map(|c| rec.dir.join(format!("{}-src{k}-conn{c}.bin", rec.tag)))
                    .collect();
                rec.files.extend(files.iter().cloned());
                let out = rec.dir.join(format!("{}-delivered{k}.bin", rec.tag));
                delivered.files.push(out.clone());
                let px = DefectProxy::start(
                    ([127, 0, 0, 1], port).into(),
                    *mutation,
                    shared.clone(),
                    files,
                    out,
                )
                .await?;
                let uri = px.uri();
                proxies.push(px);
                Ok(uri)
            }
        }
    }

    /// Reset every open connection of the current proxy now ("the network
    /// breaks"); how many were open. Later connections are forwarded
    /// normally.
    pub fn cut_now(&self) -> Result<usize> {
        Ok(self.live_proxy("cut")?.cut_now())
    }

    /// Partition every open connection of the current proxy now ("the
    /// network goes silent": no byte, no close; [`ProxyHandle::partition_now`]);
    /// later connections are forwarded normally.
    pub async fn partition_now(&self) -> Result<usize> {
        self.live_proxy("partition")?.partition_now().await
    }

    /// The current proxy of a route that has one, for a connection fault.
    fn live_proxy(&self, fault: &str) -> Result<ProxyHandle> {
        match self {
            Route::Direct => {
                anyhow::bail!(
                    "cannot {fault} a direct connection (no proxy in the route; in a scenario: `migrate` with `proxy = {{}}`)"
                )
            }
            Route::Record(r) => match r.proxies.last() {
                Some(p) => Ok(p.handle()),
                None => anyhow::bail!("no connection to {fault} yet"),
            },
            Route::Proxy { handle, .. } => match handle {
                Some(h) => Ok(h.clone()),
                None => anyhow::bail!("no connection to {fault} yet"),
            },
            Route::Mutate { .. } => {
                anyhow::bail!("cannot {fault} a defect proxy's connection (a seeded defect run)")
            }
        }
    }

    /// The first main channel as the destination received it, when recorded.
    pub fn delivered_main(&self) -> Option<&std::path::Path> {
        match self {
            Route::Record(r) => r.files.first().map(|p| p.as_path()),
            Route::Mutate { delivered, .. } => delivered.files.first().map(|p| p.as_path()),
            _ => None,
        }
    }

    /// Wait (at most `limit` per proxy) until the defect proxies' main
    /// channels are closed, so the delivered recordings are complete.
    pub async fn settle_delivery(&self, limit: std::time::Duration) {
        if let Route::Mutate { proxies, .. } = self {
            for p in proxies {
                if !p.main_settled(limit).await {
                    tracing::warn!("defect proxy: main channel still open after {limit:?}; its delivered recording may be incomplete");
                }
            }
        }
    }

    /// The recorder, when recording.
    pub fn recorder(&self) -> Option<&Recorder> {
        match self {
            Route::Record(r) | Route::Mutate { rec: r, .. } => Some(r),
            _ => None,
        }
    }
}
