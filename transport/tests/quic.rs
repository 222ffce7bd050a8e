//! The transport over real QUIC on 127.0.0.1: pinning, framing, limits.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidings_engine::wire::{self, ClientFrame, ServerFrame, WireError};
use tidings_transport::{
    client_endpoint, endpoint, udp_socket, DialConfig, Fingerprint, FrameError, FrameReader,
    FrameWriter, ListenConfig, TransportError,
};

struct Server {
    endpoint: quinn::Endpoint,
    pin: Fingerprint,
}

fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["tidings-relay".to_string()]).expect("certificate");
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    (certified.cert.der().clone(), PrivateKeyDer::Pkcs8(key))
}

fn server() -> Server {
    let (cert, key) = certificate();
    let pin = Fingerprint::of_cert(&cert);
    let config = ListenConfig::new(cert, key)
        .idle_timeout(Duration::from_secs(5))
        .build()
        .expect("server config");
    let (socket, _) = udp_socket(SocketAddr::from(([127, 0, 0, 1], 0)), 1 << 20).expect("socket");
    Server {
        endpoint: endpoint(socket, Some(config)).expect("endpoint"),
        pin,
    }
}

impl Server {
    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("address")
    }

    /// Accepts one connection and its stream.
    async fn accept(&self) -> (quinn::Connection, FrameWriter, FrameReader) {
        let conn = self
            .endpoint
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let (send, recv) = conn.accept_bi().await.expect("stream");
        (conn, FrameWriter::new(send), FrameReader::new(recv, 1024))
    }
}

async fn dial(
    addr: SocketAddr,
    config: DialConfig,
) -> Result<(quinn::Connection, FrameWriter, FrameReader), quinn::ConnectionError> {
    let endpoint = client_endpoint(addr, config.build().expect("client config")).expect("client");
    let conn = endpoint
        .connect(addr, "tidings-relay")
        .expect("connect")
        .await?;
    let (send, recv) = conn.open_bi().await?;
    Ok((
        conn,
        FrameWriter::new(send),
        FrameReader::new(recv, wire::MAX_FRAME_LEN),
    ))
}

fn received() -> ClientFrame {
    ClientFrame::Received {
        conversation: tidings_engine::ConversationId([3; 16]),
        up_to: 7,
    }
}

#[tokio::test]
async fn frames_cross_a_pinned_connection_in_order() {
    let server = server();
    let mismatch = Arc::new(AtomicBool::new(true));
    let config = DialConfig::new(server.pin)
        .keepalive(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(5))
        .report_mismatch(Arc::clone(&mismatch));
    let addr = server.addr();
    let client = tokio::spawn(async move {
        let (_conn, mut writer, mut reader) = dial(addr, config).await.expect("dial");
        // Two frames in one write, then one more.
        writer.queue(&received()).expect("encode");
        writer.queue(&received()).expect("encode");
        writer.flush().await.expect("flush");
        writer.write_frame(&received()).await.expect("write");
        writer.get_mut().finish().expect("finish");
        let answer = reader.read_frame::<ServerFrame>().await.expect("answer");
        assert!(matches!(answer, Some(ServerFrame::PullMode)), "{answer:?}");
        assert!(reader
            .read_frame::<ServerFrame>()
            .await
            .expect("end")
            .is_none());
    });
    let (_conn, mut writer, mut reader) = server.accept().await;
    for _ in 0..3 {
        let frame = reader.read_frame::<ClientFrame>().await.expect("frame");
        assert_eq!(
            frame.map(|f| wire::frame_bytes(&f).expect("encode")),
            Some(wire::frame_bytes(&received()).expect("encode"))
        );
    }
    assert!(reader
        .read_frame::<ClientFrame>()
        .await
        .expect("end")
        .is_none());
    writer
        .write_frame(&ServerFrame::PullMode)
        .await
        .expect("answer");
    writer.get_mut().finish().expect("finish");
    client.await.expect("client");
    assert!(!mismatch.load(Ordering::Relaxed), "the pin matched");
}

#[tokio::test]
async fn a_certificate_other_than_the_pinned_one_is_refused() {
    let server = server();
    let addr = server.addr();
    let mismatch = Arc::new(AtomicBool::new(false));
    let wrong = Fingerprint::from([0x42; 32]);
    let config = DialConfig::new(wrong).report_mismatch(Arc::clone(&mismatch));
    let accept = tokio::spawn(async move {
        // The server sees the handshake fail (or nothing at all); either way no stream.
        if let Some(incoming) = server.endpoint.accept().await {
            assert!(incoming.await.is_err());
        }
    });
    assert!(dial(addr, config).await.is_err());
    assert!(mismatch.load(Ordering::Relaxed), "the dialer can tell why");
    accept.await.expect("server");
}

#[tokio::test]
async fn an_oversized_frame_is_refused_from_its_length_prefix() {
    let server = server();
    let addr = server.addr();
    let config = DialConfig::new(server.pin);
    let client = tokio::spawn(async move {
        let (conn, mut writer, _reader) = dial(addr, config).await.expect("dial");
        // Announces 1 MiB (the server reads at most 1,024 bytes) and sends none of it: a
        // reader that allocated or waited for the body would hang here.
        writer
            .write_raw(&(1u32 << 20).to_be_bytes())
            .await
            .expect("write");
        conn.closed().await;
    });
    let (conn, _writer, mut reader) = server.accept().await;
    match reader.read_frame::<ClientFrame>().await {
        Err(FrameError::Wire(WireError::FrameTooLarge { len, max })) => {
            assert_eq!((len, max), (1 << 20, 1024));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    conn.close(0u32.into(), b"");
    client.await.expect("client");
}

#[tokio::test]
async fn a_stream_that_ends_inside_a_frame_is_an_error_and_garbage_is_malformed() {
    let server = server();
    let addr = server.addr();
    let config = DialConfig::new(server.pin);
    let client = tokio::spawn(async move {
        let (conn, mut writer, _reader) = dial(addr, config).await.expect("dial");
        // A whole frame of garbage, then half a frame, then the end of the stream.
        writer
            .write_raw(&[0, 0, 0, 2, 0xff, 0xff])
            .await
            .expect("garbage");
        writer.write_raw(&[0, 0, 0, 9, 1, 2]).await.expect("half");
        writer.get_mut().finish().expect("finish");
        conn.closed().await;
    });
    let (conn, _writer, mut reader) = server.accept().await;
    assert!(matches!(
        reader.read_frame::<ClientFrame>().await,
        Err(FrameError::Wire(WireError::Malformed(_)))
    ));
    assert!(matches!(
        reader.read_body().await,
        Err(FrameError::Truncated { missing: 7 })
    ));
    conn.close(0u32.into(), b"");
    client.await.expect("client");
}

#[test]
fn an_idle_timeout_quic_cannot_encode_is_a_typed_error() {
    let config = DialConfig::new(Fingerprint::from([0; 32])).idle_timeout(Duration::MAX);
    assert!(matches!(
        config.build(),
        Err(TransportError::IdleTimeout { .. })
    ));
}
