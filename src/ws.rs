//! One-task WebSockets: tungstenite run straight on a tokio socket by the one task that owns
//! it.
//!
//! A call's two sockets are each read and written by exactly one task, the call's owner
//! ([`crate::bridge`]). tokio-tungstenite's `WebSocketStream` is built for any number of tasks:
//! every read and write goes through `AllowStd`, which registers the caller's waker in two proxy
//! wakers (atomic register, take and wake on every message) and re-wraps the `Context`. Here the
//! socket simply keeps the wakers that last polled its reading side and its writing side (the
//! bridge polls them with different wakers), each cloned only when it changes, and maps tokio's
//! `Pending` to `WouldBlock` for tungstenite's blocking-style API. The contract is
//! tokio-tungstenite's: `WouldBlock` becomes `Pending`, a message accepted while the socket is
//! full stays queued and `poll_ready` flushes it first, and the end of the stream is `None`.
//!
//! Used for the Twilio Media Stream ([`crate::http::media_stream`]), the Realtime upstream
//! ([`crate::openai::realtime`]), and by the fake Realtime peer of the load generator.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::HandshakeError;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, WebSocket};

/// Which side of the WebSocket is being polled: the `Stream` (reads, and the replies to pings
/// and closes that tungstenite writes while reading) or the `Sink` (writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Read = 0,
    Write = 1,
}

/// A tokio socket seen through `std::io::{Read, Write}` by the task that owns it: reads and
/// writes are `poll_read`/`poll_write` with the waker of the side being polled, `Pending`
/// becoming `WouldBlock`.
#[derive(Debug)]
struct TaskIo<S> {
    io: S,
    /// The wakers that last polled each side, indexed by [`Side`].
    wakers: [Waker; 2],
    /// The side being polled now.
    side: Side,
    /// The writing side's last write or flush would block: it waits for write readiness.
    write_waiting: bool,
}

impl<S> TaskIo<S> {
    fn new(io: S) -> Self {
        Self { io, wakers: [Waker::noop().clone(), Waker::noop().clone()], side: Side::Read, write_waiting: false }
    }

    /// Makes `cx`'s waker the one woken when `side` of the socket becomes ready.
    fn register(&mut self, cx: &Context<'_>, side: Side) {
        let slot = &mut self.wakers[side as usize];
        if !slot.will_wake(cx.waker()) {
            *slot = cx.waker().clone();
        }
        self.side = side;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TaskIo<S> {
    fn poll<T>(
        &mut self,
        side: Side,
        f: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        match f(Pin::new(&mut self.io), &mut Context::from_waker(&self.wakers[side as usize])) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// A write from either side. tokio keeps one write-readiness waker per socket: a write made
    /// while reading (a pong, a close reply) that blocks registers the reading side's waker
    /// there (the next read retries it), so a writing side that was waiting is woken to
    /// register itself again rather than sleep through the readiness it waits for.
    fn poll_write_side<T>(
        &mut self,
        f: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        let side = self.side;
        let r = self.poll(side, f);
        let blocked = matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        match side {
            Side::Write => self.write_waiting = blocked,
            Side::Read if blocked && self.write_waiting => self.wakers[Side::Write as usize].wake_by_ref(),
            Side::Read => {}
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> io::Read for TaskIo<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.poll(Side::Read, |io, cx| {
            let mut rb = ReadBuf::new(buf);
            io.poll_read(cx, &mut rb).map_ok(|()| rb.filled().len())
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> io::Write for TaskIo<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.poll_write_side(|io, cx| io.poll_write(cx, buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.poll_write_side(|io, cx| io.poll_flush(cx))
    }
}

/// A WebSocket as a `Stream` of messages and a `Sink` of messages, for the one task that owns
/// it. Polling it from a second task is safe but moves the wake-ups to that task.
#[derive(Debug)]
pub struct WsStream<S> {
    ws: WebSocket<TaskIo<S>>,
    /// False after a `start_send` that could not write everything out.
    ready: bool,
    /// The stream has returned its end or an error.
    ended: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Wraps a socket whose opening handshake is done.
    pub fn from_raw_socket(io: S, role: Role, config: WebSocketConfig) -> Self {
        Self::from_partially_read(io, Vec::new(), role, config)
    }

    /// Wraps a socket whose opening handshake is done, with bytes read past the handshake.
    pub fn from_partially_read(io: S, early: Vec<u8>, role: Role, config: WebSocketConfig) -> Self {
        Self::open(WebSocket::from_partially_read(TaskIo::new(io), early, role, Some(config)))
    }

    /// A WebSocket in the open state, nothing queued.
    fn open(ws: WebSocket<TaskIo<S>>) -> Self {
        Self { ws, ready: true, ended: false }
    }

    /// Runs `f` with `cx`'s waker registered for `side` of the socket.
    fn polled_by<T>(&mut self, cx: &Context<'_>, side: Side, f: impl FnOnce(&mut WebSocket<TaskIo<S>>) -> T) -> T {
        self.ws.get_mut().register(cx, side);
        f(&mut self.ws)
    }
}

/// Runs the client side of the opening handshake on `io` (already connected, TLS included).
/// An HTTP refusal is `Err(WsError::Http(response))`, as tungstenite reports it.
pub async fn client_handshake<S, R>(
    request: R,
    io: S,
    config: WebSocketConfig,
) -> Result<(WsStream<S>, Response), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: IntoClientRequest,
{
    let mut step = Some(tungstenite::client::client_with_config(request, TaskIo::new(io), Some(config)));
    poll_fn(|cx| {
        // Invariant: `step` is refilled on every `Pending` and the future is not polled after
        // it returned `Ready`.
        let r = step.take().expect("handshake polled after completion");
        let r = match r {
            Err(HandshakeError::Interrupted(mut mid)) => {
                // The step that blocked registered the noop or an older waker: register this
                // task's and try again, so the socket wakes it. A handshake step reads and
                // writes, as the reading side.
                mid.get_mut().get_mut().register(cx, Side::Read);
                mid.handshake()
            }
            r => r,
        };
        match r {
            Ok((ws, resp)) => Poll::Ready(Ok((WsStream::open(ws), resp))),
            Err(HandshakeError::Failure(e)) => Poll::Ready(Err(e)),
            Err(HandshakeError::Interrupted(mid)) => {
                step = Some(Err(HandshakeError::Interrupted(mid)));
                Poll::Pending
            }
        }
    })
    .await
}

/// `WouldBlock` (the socket is not ready and will wake the task) is `Pending`.
fn pending_on_block<T>(r: Result<T, WsError>) -> Poll<Result<T, WsError>> {
    match r {
        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsStream<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(pending_on_block(self.polled_by(cx, Side::Read, |ws| ws.read()))) {
            Ok(m) => Poll::Ready(Some(Ok(m))),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Err(e) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsStream<S> {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        let r = std::task::ready!(pending_on_block(self.polled_by(cx, Side::Write, |ws| ws.flush())));
        self.ready = true;
        Poll::Ready(r)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        // No `Context` here: a write that blocks is finished by `poll_ready`/`poll_flush`,
        // which register their waker first.
        self.ws.get_mut().side = Side::Write;
        match self.ws.write(item) {
            // Queued, not all written: `poll_ready` flushes it before the next message.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.ready = false;
                Ok(())
            }
            r => r,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let r = std::task::ready!(pending_on_block(self.polled_by(cx, Side::Write, |ws| ws.flush())));
        self.ready = true;
        // The close handshake has just completed: the flush is done, not failed.
        Poll::Ready(if matches!(r, Err(WsError::ConnectionClosed)) { Ok(()) } else { r })
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        // `close` queues the close frame once (later calls only flush) and flushes.
        self.ready = true;
        match std::task::ready!(pending_on_block(self.polled_by(cx, Side::Write, |ws| ws.close(None)))) {
            Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{DuplexStream, duplex};

    use super::*;

    fn config() -> WebSocketConfig {
        WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(1024)
    }

    /// A client `WsStream` connected to a tokio-tungstenite server (the reference
    /// implementation) through a pipe of `capacity` bytes.
    async fn pair(capacity: usize) -> (WsStream<DuplexStream>, tokio_tungstenite::WebSocketStream<DuplexStream>) {
        let (a, b) = duplex(capacity);
        let server = tokio::spawn(tokio_tungstenite::accept_async(b));
        let (client, resp) = client_handshake("ws://switchboard.test/media", a, config()).await.expect("handshake");
        assert_eq!(resp.status(), 101);
        (client, server.await.expect("server task").expect("server handshake"))
    }

    #[tokio::test]
    async fn handshake_then_messages_both_ways_then_close() {
        let (mut client, mut server) = pair(4096).await;
        client.send(Message::text("hello")).await.expect("send");
        assert_eq!(server.next().await.expect("message").expect("ok"), Message::text("hello"));
        // The client waits for a message that arrives later, from another task: the pipe
        // must wake it.
        let echo = tokio::spawn(async move {
            tokio::task::yield_now().await;
            server.send(Message::text("world")).await.expect("server send");
            server
        });
        assert_eq!(client.next().await.expect("message").expect("ok"), Message::text("world"));
        let mut server = echo.await.expect("echo task");
        // Closing: the peer sees the close and answers it as it reads on; the client sees the
        // answer, then the end of the stream.
        client.close().await.expect("close");
        assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
        assert!(server.next().await.is_none(), "the server's read sends the answer and ends");
        drop(server);
        assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))), "the close answer");
        assert!(client.next().await.is_none(), "the stream ends after the close handshake");
        assert!(client.next().await.is_none(), "and stays ended");
    }

    #[tokio::test]
    async fn a_message_larger_than_the_pipe_is_queued_then_flushed_whole() {
        let (mut client, mut server) = pair(256).await;
        let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        // `feed` accepts the message although the pipe takes only 256 bytes; the flush
        // finishes while the peer reads.
        let reader = tokio::spawn(async move { server.next().await.expect("message").expect("ok") });
        client.feed(Message::binary(big.clone())).await.expect("feed");
        client.flush().await.expect("flush");
        assert_eq!(reader.await.expect("reader"), Message::binary(big));
    }

    #[tokio::test]
    async fn a_queued_message_goes_out_before_the_next_one() {
        let (mut client, mut server) = pair(256).await;
        let big = Message::binary(vec![7u8; 16 * 1024]);
        let reader = tokio::spawn(async move {
            let first = server.next().await.expect("message").expect("ok");
            let second = server.next().await.expect("message").expect("ok");
            (first, second)
        });
        // The first `feed` leaves most of `big` queued; the second must wait in `poll_ready`
        // until it is written, so the peer gets them whole and in order.
        client.feed(big.clone()).await.expect("feed big");
        client.feed(Message::text("after")).await.expect("feed small");
        client.flush().await.expect("flush");
        assert_eq!(reader.await.expect("reader"), (big, Message::text("after")));
    }

    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_blocked_write_made_while_reading_wakes_the_waiting_writer() {
        use std::sync::Arc;
        use std::sync::atomic::Ordering::SeqCst;
        // The bridge reads with one waker and writes with another. tokio keeps one waker for
        // write readiness, so a pong that blocks while reading takes the writer's place there.
        let (mut client, mut server) = pair(256).await;
        let writer = Arc::new(Count(0.into()));
        let (w, r) = (Waker::from(Arc::clone(&writer)), Waker::from(Arc::new(Count(0.into()))));
        let mut c = Pin::new(&mut client);
        assert!(c.as_mut().poll_ready(&mut Context::from_waker(&w)).is_ready());
        c.as_mut().start_send(Message::binary(vec![1u8; 8 * 1024])).expect("queued");
        assert!(c.as_mut().poll_flush(&mut Context::from_waker(&w)).is_pending(), "the pipe is full");
        server.send(Message::Ping(vec![9u8].into())).await.expect("ping");
        let before = writer.0.load(SeqCst);
        let mut reading = Context::from_waker(&r);
        assert!(matches!(c.as_mut().poll_next(&mut reading), Poll::Ready(Some(Ok(Message::Ping(_))))));
        // The next read tries to send the pong first, and blocks on the full pipe.
        assert!(c.as_mut().poll_next(&mut reading).is_pending());
        assert!(writer.0.load(SeqCst) > before, "the waiting writer is woken to register again");
        // Registered again, the writer finishes as the peer reads.
        let peer = tokio::spawn(async move { server.next().await.expect("message").expect("ok") });
        poll_fn(|cx| c.as_mut().poll_flush(cx)).await.expect("flush");
        assert_eq!(peer.await.expect("peer"), Message::binary(vec![1u8; 8 * 1024]));
    }

    #[tokio::test]
    async fn a_refused_upgrade_is_an_http_error() {
        let (a, mut b) = duplex(4096);
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = b.read(&mut buf).await;
            b.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await.expect("write");
            b
        });
        let err = client_handshake("ws://switchboard.test/media", a, config()).await.expect_err("refused");
        assert!(matches!(&err, WsError::Http(r) if r.status() == 403), "{err:?}");
        drop(server.await);
    }

    #[tokio::test]
    async fn bytes_read_past_the_handshake_are_the_first_message() {
        let (a, b) = duplex(4096);
        // A masked client text frame "hi" (RFC 6455 §5.2), as if read with the request head.
        let mask = [1u8, 2, 3, 4];
        let mut early = vec![0x81, 0x82];
        early.extend_from_slice(&mask);
        early.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        let mut server = WsStream::from_partially_read(a, early, Role::Server, config());
        assert_eq!(server.next().await.expect("message").expect("ok"), Message::text("hi"));
        drop(b);
        assert!(
            matches!(
                server.next().await,
                Some(Err(WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)))
            ),
            "a pipe closed without a close frame is a reset"
        );
        assert!(server.next().await.is_none(), "and the stream has ended");
    }
}
