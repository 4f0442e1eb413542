//! How the source reaches the destination: directly, through recording
//! proxies (so RAMBlocks can be checked against a replay of the wire bytes),
//! or through a proxy that damages the first connection.

use std::path::PathBuf;

use anyhow::Result;

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
}

impl Recorder {
    /// Recordings go to `dir/<tag>-rec<k>-conn<c>.bin`.
    pub fn new(dir: impl Into<PathBuf>, tag: impl Into<String>) -> Recorder {
        Recorder { dir: dir.into(), tag: tag.into(), proxies: Vec::new(), files: Vec::new() }
    }

    /// A new recording proxy to a destination listening on `port`; returns
    /// the URI the source should connect to.
    pub async fn uri_for(&mut self, port: u16) -> Result<String> {
        let k = self.proxies.len();
        let plans: Vec<ProxyPlan> = (0..CONNECTIONS)
            .map(|c| {
                let f = self.dir.join(format!("{}-rec{k}-conn{c}.bin", self.tag));
                self.files.push(f.clone());
                ProxyPlan::new().on_connection(c).record(f)
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
        for f in &self.files {
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
    /// cut); later (recovery) connections through a plain proxy, which
    /// replaces the previous one.
    Proxy { plan: Option<ProxyPlan>, proxy: Option<Proxy>, handle: Option<ProxyHandle> },
}

impl Route {
    /// A route through a proxy whose first connection follows `plan`.
    pub fn proxy(plan: ProxyPlan) -> Route {
        Route::Proxy { plan: Some(plan), proxy: None, handle: None }
    }

    /// The URI the source should use for a destination listening on `port`.
    pub async fn uri_for(&mut self, port: u16) -> Result<String> {
        match self {
            Route::Direct => Ok(format!("tcp:127.0.0.1:{port}")),
            Route::Record(r) => r.uri_for(port).await,
            Route::Proxy { plan, proxy, handle } => {
                let p = plan.take().unwrap_or_default();
                let px = Proxy::start("127.0.0.1:0", ([127, 0, 0, 1], port).into(), p).await?;
                let uri = px.uri();
                *handle = Some(px.handle());
                *proxy = Some(px);
                Ok(uri)
            }
        }
    }

    /// Reset every open connection of the current proxy now ("the network
    /// breaks"); later connections are forwarded normally.
    pub fn cut_now(&self) -> Result<()> {
        match self {
            Route::Direct => {
                anyhow::bail!("cannot cut a direct connection (no proxy in the route)")
            }
            Route::Record(r) => match r.proxies.last() {
                Some(p) => {
                    p.cut_now();
                    Ok(())
                }
                None => anyhow::bail!("no connection to cut yet"),
            },
            Route::Proxy { handle, .. } => match handle {
                Some(h) => {
                    h.cut_now();
                    Ok(())
                }
                None => anyhow::bail!("no connection to cut yet"),
            },
        }
    }

    /// The handle of the current fault proxy, if any.
    pub fn proxy_handle(&self) -> Option<&ProxyHandle> {
        match self {
            Route::Proxy { handle, .. } => handle.as_ref(),
            _ => None,
        }
    }

    /// The recorder, when recording.
    pub fn recorder(&self) -> Option<&Recorder> {
        match self {
            Route::Record(r) => Some(r),
            _ => None,
        }
    }
}
