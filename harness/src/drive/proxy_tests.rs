//! Tests of the proxy (real sockets on 127.0.0.1).

use super::*;
use tokio::sync::oneshot;

/// An upstream that reads everything of its first connection (returned
/// through the oneshot with how it ended) and optionally writes
/// `reply` right after accepting.
async fn sink(reply: Vec<u8>) -> (SocketAddr, oneshot::Receiver<(Vec<u8>, std::io::Result<()>)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        if !reply.is_empty() {
            s.write_all(&reply).await.unwrap();
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let res = loop {
            match s.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        let _ = tx.send((got, res));
    });
    (addr, rx)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn send_all(addr: SocketAddr, data: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(data).await;
    c
}

/// A proxy with one open connection that has forwarded "abc" to a sink
/// upstream and is idle: (proxy, source side, the sink's result).
async fn idle_connection_after_abc(
) -> (Proxy, TcpStream, oneshot::Receiver<(Vec<u8>, std::io::Result<()>)>) {
    let (up, rx) = sink(vec![]).await;
    let p = Proxy::start("127.0.0.1:0", up, ProxyPlan::new()).await.unwrap();
    let c = send_all(p.addr(), b"abc").await;
    p.handle()
        .wait_for("3 bytes", |s| s.first().is_some_and(|c| c.src_to_dst == 3), T)
        .await
        .unwrap();
    (p, c, rx)
}

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn forwards_both_ways_and_counts() {
    let (up, rx) = sink(b"hello from upstream".to_vec()).await;
    let p = Proxy::start("127.0.0.1:0", up, ProxyPlan::new()).await.unwrap();
    let data = pattern(300_000);
    let mut c = send_all(p.addr(), &data).await;
    let mut back = vec![0u8; 19];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello from upstream");
    c.shutdown().await.unwrap();
    let (got, res) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    res.unwrap();
    assert_eq!(got, data);
    // upstream closed after reading EOF -> client sees EOF too
    let mut rest = Vec::new();
    tokio::time::timeout(T, c.read_to_end(&mut rest)).await.unwrap().unwrap();
    let s = p.handle().wait_ended(0, T).await.unwrap();
    assert_eq!(s.src_to_dst, data.len() as u64);
    assert_eq!(s.dst_to_src, 19);
    assert_eq!(s.end, Some(ConnEnd::Closed));
    assert_eq!(p.handle().bytes(0), (300_000, 19));
}

#[tokio::test]
async fn flip_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.bin");
    let (up, rx) = sink(vec![]).await;
    let plan = ProxyPlan::new()
        .record(&rec)
        .flip(0, 0xff)
        .flip(65_535, 0x01)
        .flip(65_536, 0x80)
        .flip(199_999, 0x0f)
        .flip(5_000_000, 1);
    let p = Proxy::start("127.0.0.1:0", up, plan).await.unwrap();
    let data = pattern(200_000);
    let mut c = send_all(p.addr(), &data).await;
    c.shutdown().await.unwrap();
    let (got, _) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    let mut want = data.clone();
    want[0] ^= 0xff;
    want[65_535] ^= 0x01;
    want[65_536] ^= 0x80;
    want[199_999] ^= 0x0f;
    assert_eq!(got.len(), want.len());
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(diff.is_empty(), "bytes differ at {diff:?}");
    p.handle().wait_ended(0, T).await.unwrap();
    assert_eq!(std::fs::read(&rec).unwrap(), want, "record holds the forwarded (damaged) bytes");
}

#[tokio::test]
async fn plan_applies_to_its_connection_only() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let p = Proxy::start("127.0.0.1:0", up, ProxyPlan::new().on_connection(1).flip(1, 0xff))
        .await
        .unwrap();
    let mut outs = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        c.write_all(&[1, 2, 3]).await.unwrap();
        c.shutdown().await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        outs.push(got);
        drop(c);
    }
    assert_eq!(outs, vec![vec![1, 2, 3], vec![1, 0xfd, 3], vec![1, 2, 3]]);
    assert_eq!(p.handle().connections(), 3);
}

#[tokio::test]
async fn truncate_exact() {
    for n in [0u64, 1, 65_536, 100_001] {
        let (up, rx) = sink(vec![]).await;
        let p = Proxy::start("127.0.0.1:0", up, ProxyPlan::new().truncate_at(n)).await.unwrap();
        let data = pattern(300_000);
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        // the proxy closes the source side: writing fails eventually, or
        // succeeds into buffers; either way reading sees the close
        let _ = tokio::time::timeout(T, c.write_all(&data)).await.unwrap();
        let (got, res) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
        assert!(res.is_ok(), "destination must see a clean EOF, got {res:?}");
        assert_eq!(got, data[..n as usize], "truncate_at {n}");
        let mut b = Vec::new();
        let r = tokio::time::timeout(T, c.read_to_end(&mut b)).await.unwrap();
        assert!(b.is_empty(), "{r:?}");
        let s = p.handle().wait_ended(0, T).await.unwrap();
        assert_eq!(s.end, Some(ConnEnd::Truncated));
        assert_eq!(s.src_to_dst, n);
    }
}

#[tokio::test]
async fn cut_at_and_cut_now() {
    // cut_at: exactly n bytes, then reset
    let (up, rx) = sink(vec![]).await;
    let p = Proxy::start("127.0.0.1:0", up, ProxyPlan::new().cut_at(12_345)).await.unwrap();
    let mut c = TcpStream::connect(p.addr()).await.unwrap();
    let w = tokio::time::timeout(T, c.write_all(&pattern(100_000))).await.unwrap();
    let (got, _res) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    assert_eq!(got, pattern(12_345));
    let s = p.handle().wait_ended(0, T).await.unwrap();
    assert_eq!(s.end, Some(ConnEnd::Cut));
    let mut b = Vec::new();
    let r = tokio::time::timeout(T, c.read_to_end(&mut b)).await.unwrap();
    // the reset is reported once: to the write if it was still running
    assert!(w.is_err() || r.is_err(), "source side must be reset, got write {w:?}, read {r:?}");

    // cut_now on an idle open connection
    let (p, mut c, rx) = idle_connection_after_abc().await;
    p.cut_now();
    let (got, res) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    assert_eq!(got, b"abc");
    assert!(res.is_err(), "destination must see a reset, got {res:?}");
    let mut b = Vec::new();
    assert!(tokio::time::timeout(T, c.read_to_end(&mut b)).await.unwrap().is_err());
    assert_eq!(p.handle().wait_ended(0, T).await.unwrap().end, Some(ConnEnd::Cut));
}

#[tokio::test]
async fn partition_keeps_both_ends_open_and_silent_until_the_proxy_drops() {
    let (p, mut c, mut rx) = idle_connection_after_abc().await;
    assert_eq!(p.handle().partition_now().await.unwrap(), 1);
    // Done on return: the source may close at once and it is not passed on.
    assert_eq!(p.handle().stats()[0].end, Some(ConnEnd::Partitioned));
    // Bytes written now go nowhere, and neither side is told anything: the
    // source's socket stays writable and unread-from, the destination sees
    // neither data nor EOF nor reset.
    c.write_all(b"lost").await.unwrap();
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await;
    assert!(read.is_err(), "the source side must stay silent, got {read:?}");
    c.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "the destination side must stay open");
    assert_eq!(p.handle().bytes(0).0, 3);
    // Dropping the proxy closes both ends at last.
    drop(p);
    let (got, res) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    assert_eq!(got, b"abc");
    assert!(res.is_ok(), "the destination sees the close, got {res:?}");
}

#[tokio::test]
async fn throttle_and_stall_timing() {
    // 200 KB at 400 KB/s: ~0.5 s
    let (up, rx) = sink(vec![]).await;
    let p = Proxy::start("127.0.0.1:0", up, ProxyPlan::new().throttle(400_000)).await.unwrap();
    let t0 = Instant::now();
    let mut c = send_all(p.addr(), &pattern(200_000)).await;
    c.shutdown().await.unwrap();
    let (got, _) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    let dt = t0.elapsed();
    assert_eq!(got.len(), 200_000);
    assert!(
        dt >= Duration::from_millis(400) && dt <= Duration::from_millis(1500),
        "throttled transfer took {dt:?}"
    );

    // stall 300 ms after 1000 bytes
    let (up, rx) = sink(vec![]).await;
    let p =
        Proxy::start("127.0.0.1:0", up, ProxyPlan::new().stall(1000, Duration::from_millis(300)))
            .await
            .unwrap();
    let t0 = Instant::now();
    let mut c = send_all(p.addr(), &pattern(5000)).await;
    p.handle()
        .wait_for("1000 bytes", |s| s.first().is_some_and(|c| c.src_to_dst >= 1000), T)
        .await
        .unwrap();
    assert_eq!(p.handle().bytes(0).0, 1000, "stall must happen at exactly 1000 bytes");
    c.shutdown().await.unwrap();
    let (got, _) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    let dt = t0.elapsed();
    assert_eq!(got, pattern(5000));
    assert!(
        dt >= Duration::from_millis(280) && dt <= Duration::from_millis(2000),
        "stalled transfer took {dt:?}"
    );
}

#[tokio::test]
async fn drop_stops_everything() {
    let (up, rx) = sink(vec![]).await;
    let p = Proxy::start("127.0.0.1:0", up, ProxyPlan::new()).await.unwrap();
    let addr = p.addr();
    let mut c = send_all(addr, b"xyz").await;
    p.handle()
        .wait_for("3 bytes", |s| s.first().is_some_and(|c| c.src_to_dst == 3), T)
        .await
        .unwrap();
    drop(p);
    // both sides of the open connection are closed
    let (got, _) = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    assert_eq!(got, b"xyz");
    let mut b = Vec::new();
    let _ = tokio::time::timeout(T, c.read_to_end(&mut b)).await.unwrap();
    // and the listener is gone
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting after drop");
}

#[tokio::test]
async fn upstream_refused() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let p = Proxy::start("127.0.0.1:0", dead, ProxyPlan::new()).await.unwrap();
    let mut c = TcpStream::connect(p.addr()).await.unwrap();
    let s = p.handle().wait_ended(0, T).await.unwrap();
    assert!(
        matches!(s.end, Some(ConnEnd::Error(ref e)) if e.contains("connecting upstream")),
        "{s:?}"
    );
    let mut b = Vec::new();
    let _ = tokio::time::timeout(T, c.read_to_end(&mut b)).await.unwrap();
}
