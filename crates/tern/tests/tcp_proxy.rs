//! Raw TCP services through a real `tern run`: plain pass-through with half-close,
//! PROXY protocol v1 and v2 headers toward the machine, TLS terminated by SNI with
//! raw bytes behind, and a connection closed when no machine can take it.

mod common;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::echo::*;
use common::*;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// A config with one app, `db`, whose services each have one public port.
/// `services` is (internal_port, public port entry).
fn tcp_config(ports: Ports, ips: &Ips, services: &[(u16, String)], state: &str) -> String {
    let mut c = config_head(ports, "");
    c.push_str(
        "\n[tls]\ncerts_dir = \"certs\"\n\n[[app]]\nname = \"db\"\nhostnames = [\"db.test\"]\n",
    );
    for (internal, port) in services {
        c.push_str(&format!(
            "\n[[app.service]]\ninternal_port = {internal}\nports = [{port}]\n"
        ));
    }
    c.push_str(&machine("m1", "db", "ams", ips.get(1)).replace("\"started\"", state));
    c
}

struct Setup {
    tern: Tern,
    certs: Certs,
}

fn start(ports: Ports, ips: &Ips, services: &[(u16, String)], state: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["db.test"]);
    let config = tcp_config(ports, ips, services, state);
    let tern = Tern::start_in(dir, &config, ports);
    Setup { tern, certs }
}

async fn connect(port: u16) -> TcpStream {
    timeout(T, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect in time")
        .expect("connect to tern")
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_tcp_echo_and_half_close() {
    let ips = Ips::new();
    let ports = Ports::new();
    let mut m = EchoMachine::start(ips.get(1), 7100, false).await;
    let s = start(
        ports,
        &ips,
        &[(7100, format!("{{ port = {}, handlers = [] }}", ports.http))],
        "\"started\"",
    );

    // Interactive: a line goes through and comes back before the client ends.
    let mut c = connect(s.tern.ports.http).await;
    c.write_all(b"ping\n").await.unwrap();
    let mut got = [0u8; 5];
    timeout(T, c.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&got, b"ping\n");
    // Half-close: the client ends its side and still reads the machine's answer,
    // which the machine only writes after seeing the end of stream.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(T, c.read_to_end(&mut rest))
        .await
        .expect("reply after half-close in time")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "EOF-SEEN 5");

    // A bigger stream, both ways at once, arrives intact.
    let data = payload(2 * 1024 * 1024 + 17, 1);
    let back = send_and_collect(connect(s.tern.ports.http).await, data.clone()).await;
    expect_echo(&back, &data);
    assert_eq!(m.conns.load(Ordering::SeqCst), 2);
    assert!(m.headers.try_recv().is_err(), "no PROXY header expected");
}

async fn proxy_proto_case(version: &str) {
    let ips = Ips::new();
    let ports = Ports::new();
    let mut m = EchoMachine::start(ips.get(1), 7200, true).await;
    let s = start(
        ports,
        &ips,
        &[(
            7200,
            format!(
                "{{ port = {}, handlers = [\"proxy_proto\"], proxy_proto_options = {{ version = \"{version}\" }} }}",
                ports.http
            ),
        )],
        "\"started\"",
    );

    for round in 0..2u32 {
        let c = connect(s.tern.ports.http).await;
        let client_addr = c.local_addr().unwrap();
        let data = payload(256 * 1024 + round as usize, 7 + round);
        let back = send_and_collect(c, data.clone()).await;

        let header = timeout(T, m.headers.recv())
            .await
            .expect("machine got a header in time")
            .expect("channel open")
            .unwrap_or_else(|e| panic!("PROXY header: {e}"));
        assert_eq!(header.version, version, "PROXY header version");
        assert_eq!(header.src, client_addr, "PROXY source is the client");
        assert_eq!(header.dst.port(), s.tern.ports.http, "PROXY dest port");
        assert_eq!(
            header.dst.ip(),
            IpAddr::from([127, 0, 0, 1]),
            "PROXY dest address"
        );
        // The header is not echoed back: only the client's own bytes follow it.
        expect_echo(&back, &data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_v1_header_then_bytes() {
    proxy_proto_case("v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_v2_header_then_bytes() {
    proxy_proto_case("v2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_terminated_raw_tcp_routed_by_sni() {
    let ips = Ips::new();
    let ports = Ports::new();
    let m = EchoMachine::start(ips.get(1), 7300, false).await;
    let s = start(
        ports,
        &ips,
        &[(
            7300,
            format!("{{ port = {}, handlers = [\"tls\"] }}", ports.https),
        )],
        "\"started\"",
    );
    let connector = tls_connector(&s.certs.ca_pem, &[]);

    let tcp = connect(s.tern.ports.https).await;
    let tls = timeout(
        T,
        connector.connect(ServerName::try_from("db.test").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("TLS handshake with SNI db.test");
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.alpn_protocol(), None, "raw TLS ports offer no ALPN");
    let data = payload(512 * 1024 + 3, 42);
    let back = send_and_collect(tls, data.clone()).await;
    expect_echo(&back, &data);
    assert_eq!(m.conns.load(Ordering::SeqCst), 1);

    // A name that belongs to no app gets no certificate (unknown_sni = reject).
    let tcp = connect(s.tern.ports.https).await;
    let refused = timeout(
        T,
        connector.connect(ServerName::try_from("other.test").unwrap(), tcp),
    )
    .await
    .expect("handshake outcome in time");
    assert!(refused.is_err(), "unknown SNI must fail the handshake");
    assert_eq!(m.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_started_machine_closes_without_data() {
    let ips = Ips::new();
    let ports = Ports::new();
    // The machine's port is open, so a wrongly routed connection would be seen.
    let m = EchoMachine::start(ips.get(1), 7400, false).await;
    let s = start(
        ports,
        &ips,
        &[(7400, format!("{{ port = {}, handlers = [] }}", ports.http))],
        "\"stopped\"",
    );
    for _ in 0..3 {
        let mut c = connect(s.tern.ports.http).await;
        // The client may speak first; nothing must come back either way.
        let _ = c.write_all(b"hello?").await;
        let mut buf = Vec::new();
        let read = timeout(T, c.read_to_end(&mut buf))
            .await
            .expect("tern closes the connection in time");
        match read {
            Ok(_) => {}
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "unexpected error {e}"
            ),
        }
        assert!(buf.is_empty(), "no data expected, got {buf:?}");
    }
    assert_eq!(
        m.conns.load(Ordering::SeqCst),
        0,
        "a stopped machine must get no connection"
    );
}
