//! Descriptors passed over a QMP unix socket with SCM_RIGHTS (what QEMU's
//! socket chardev does for `getfd` and `add-fd`): [`FdStream`] reads the
//! connection with `recvmsg()` and queues every descriptor received; while
//! a command of that connection runs, [`take_passed_fd`] hands out the
//! oldest one.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// The descriptors received on one connection and not yet claimed.
pub type PassedFds = Arc<Mutex<VecDeque<OwnedFd>>>;

tokio::task_local! {
    /// The running command's connection's descriptors.
    static PASSED: PassedFds;
}

/// Run `f` (one command) with `fds` as the connection's descriptors.
pub async fn with_fds<F: std::future::Future>(fds: PassedFds, f: F) -> F::Output {
    PASSED.scope(fds, f).await
}

/// The oldest descriptor received on the running command's connection.
pub fn take_passed_fd() -> Option<OwnedFd> {
    PASSED.try_with(|q| q.lock().unwrap_or_else(|e| e.into_inner()).pop_front()).ok().flatten()
}

/// A QMP unix connection that keeps the descriptors sent along its bytes.
pub struct FdStream {
    inner: UnixStream,
    fds: PassedFds,
}

impl FdStream {
    pub fn new(inner: UnixStream, fds: PassedFds) -> FdStream {
        FdStream { inner, fds }
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 16]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(v) = c {
            fds.extend(v.into_iter().map(crate::mem::adopt_received_fd));
        }
    }
    Ok((msg.bytes, fds))
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let raw = me.inner.as_raw_fd();
        loop {
            ready!(me.inner.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            match me.inner.try_io(Interest::READABLE, || recv(raw, dst)) {
                Ok((n, fds)) => {
                    if !fds.is_empty() {
                        tracing::debug!("QMP: {} descriptor(s) received", fds.len());
                        me.fds.lock().unwrap_or_else(|e| e.into_inner()).extend(fds);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
