//! A TCP stream that keeps the kernel's receive timestamp of what it reads.
//!
//! The load generator and the fake Realtime server measure the daemon's relay delay as
//! "sent by one peer → arrived at the other". Read in user space, "arrived" also contains the
//! receiving peer's own scheduling delay, which on a saturated host is as large as the
//! daemon's. With `SO_TIMESTAMPNS` the kernel stamps each segment when it lands in the
//! receiving socket (`CLOCK_REALTIME`, the clock of the markers), and `recvmsg` hands the stamp
//! of the last segment read back as a control message: that is the arrival proper. (Several
//! messages read at once share the stamp of the last one, which can only overstate a delay.)
//! The kernel switches its timestamping on lazily when the first socket asks, so the first
//! segments may come unstamped: [`RxStamped::stamp`] is then 0, and the callers fall back to
//! their read time.
#![allow(dead_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A [`TcpStream`] whose reads record the kernel arrival time (µs since the Unix epoch) of
/// the data last read in [`RxStamped::stamp`].
pub struct RxStamped {
    io: TcpStream,
    last_rx_us: Arc<AtomicU64>,
}

impl RxStamped {
    /// Turns on `SO_TIMESTAMPNS` for `io`.
    pub fn new(io: TcpStream) -> io::Result<Self> {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor, and an option value of the size given.
        let r = unsafe {
            libc::setsockopt(
                io.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { io, last_rx_us: Arc::new(AtomicU64::new(0)) })
    }

    /// Where the arrival time of the last read is kept (0 before any, or if it was unstamped).
    pub fn stamp(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.last_rx_us)
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }
}

/// One `recvmsg` into `dst`: bytes read, and the kernel's stamp of the last segment read.
fn recv_stamped(fd: libc::c_int, dst: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec { iov_base: dst.as_mut_ptr().cast(), iov_len: dst.len() };
    // Room for one timespec control message, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (over `dst`) and `control`, both alive for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays inside the `msg_controllen` bytes the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for RxStamped {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fd = this.io.as_raw_fd();
        loop {
            ready!(this.io.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            let len = dst.len();
            let mut short = None;
            // A short read means the socket is drained: like tokio's own `poll_read`, report
            // it as WouldBlock inside `try_io` so the readiness is cleared (only if no new
            // event came meanwhile), sparing the next read's EAGAIN system call.
            let res = this.io.try_io(Interest::READABLE, || {
                let (n, stamp) = recv_stamped(fd, dst)?;
                if n > 0 && n < len {
                    short = Some((n, stamp));
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok((n, stamp))
            });
            let (n, stamp) = match (res, short) {
                (_, Some(got)) => got,
                (Ok(got), None) => got,
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            };
            // An unstamped read clears the stamp (to 0, "none"): a stale earlier stamp would
            // understate the next delay.
            this.last_rx_us.store(stamp.unwrap_or(0), Relaxed);
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for RxStamped {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_carry_the_kernel_arrival_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server, _) = listener.accept().await.unwrap();
        let mut client = client.await.unwrap();
        let mut rx = RxStamped::new(server).unwrap();
        let stamp = rx.stamp();
        let mut buf = [0u8; 64];
        // The kernel turns its receive timestamping on lazily (a deferred static-key switch)
        // when the first socket asks: until then segments arrive unstamped. Wait for it.
        for _ in 0..200 {
            client.write_all(b"warm").await.unwrap();
            let n = rx.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"warm");
            if stamp.load(Relaxed) != 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_ne!(stamp.load(Relaxed), 0, "the kernel never stamped a segment in 2 s");
        let before = crate::common::now_us();
        client.write_all(b"hello").await.unwrap();
        // Arrives now; read later: the stamp is the arrival, not the read.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let n = rx.read(&mut buf).await.unwrap();
        let read_at = crate::common::now_us();
        assert_eq!(&buf[..n], b"hello");
        let at = stamp.load(Relaxed);
        assert!(at >= before && at + 40_000 < read_at, "stamp {at}, sent after {before}, read at {read_at}");
        // A second message, and then EOF.
        client.write_all(b"again").await.unwrap();
        let n = rx.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"again");
        assert!(stamp.load(Relaxed) >= at);
        drop(client);
        assert_eq!(rx.read(&mut buf).await.unwrap(), 0);
    }
}
