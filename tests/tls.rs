//! `wss://` and `https://` on the same port with a self-signed certificate the test makes,
//! including an encrypted PKCS#8 key opened with `SOKETI_SSL_PASS`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkcs8::der::Decode;
use pkcs8::pkcs5::pbes2;
use pkcs8::{LineEnding, PrivateKeyInfo};
use rustls::pki_types::{CertificateDer, ServerName};

struct Files {
    dir: PathBuf,
    cert_der: CertificateDer<'static>,
}

/// A self-signed certificate for localhost: its PEM, the plain key PEM and the same key
/// encrypted with `passphrase`.
fn make_files(passphrase: &str) -> Files {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = std::env::temp_dir().join(format!(
        "corecast-tls-{}-{}",
        std::process::id(),
        passphrase.len()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).expect("write key");
    let der = certified.signing_key.serialize_der();
    let info = PrivateKeyInfo::from_der(&der).expect("pkcs8 key");
    let params =
        pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"saltsalt", &[7u8; 16]).expect("params");
    let encrypted = info
        .encrypt_with_params(params, passphrase)
        .expect("encrypt");
    let pem = encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .expect("pem");
    std::fs::write(dir.join("key-encrypted.pem"), pem.as_bytes()).expect("write encrypted key");
    Files {
        dir,
        cert_der: certified.cert.der().clone(),
    }
}

struct Server {
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(env: &[(&str, String)]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
    cmd.arg("start")
        .env("SOKETI_PORT", port.to_string())
        .env("SOKETI_HOST", "127.0.0.1")
        .env("CORECAST_SHARDS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server {
        port,
        child: cmd.spawn().expect("spawn corecast"),
    }
}

fn client(files: &Files, port: u16) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(files.cert_der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    rustls::StreamOwned::new(conn, sock)
}

/// `GET /ready` over TLS; `None` while the server is not up yet.
fn https_ready(files: &Files, port: u16) -> Option<String> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut tls = client(files, port);
    tls.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn wait_ready(files: &Files, server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(resp) = https_ready(files, server.port)
            && resp.starts_with("HTTP/1.1 200")
        {
            return resp;
        }
        assert!(Instant::now() < deadline, "TLS server never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_frame_json(tls: &mut impl Read, buf: &mut Vec<u8>) -> serde_json::Value {
    loop {
        if buf.len() >= 2 {
            let len = (buf[1] & 0x7f) as usize;
            let (len, start) = if len == 126 {
                (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
            } else {
                (len, 2)
            };
            if buf.len() >= start + len {
                let v = serde_json::from_slice(&buf[start..start + len]).expect("json frame");
                buf.drain(..start + len);
                return v;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).expect("read");
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn wss_and_https_share_the_port_with_a_self_signed_certificate() {
    let files = make_files("");
    let cert = files.dir.join("cert.pem").display().to_string();
    let key = files.dir.join("key.pem").display().to_string();
    let server = spawn(&[("SOKETI_SSL_CERT", cert), ("SOKETI_SSL_KEY", key)]);
    let resp = wait_ready(&files, &server);
    assert!(resp.ends_with("OK"), "{resp}");

    let mut tls = client(&files, server.port);
    tls.write_all(
        b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("upgrade");
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tls.read(&mut chunk).expect("read head");
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    buf.drain(..end);
    let hello = read_frame_json(&mut tls, &mut buf);
    assert_eq!(hello["event"], "pusher:connection_established");
    // A masked ping over TLS gets its pong.
    let payload = br#"{"event":"pusher:ping","data":{}}"#;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tls.write_all(&frame).expect("ping");
    assert_eq!(read_frame_json(&mut tls, &mut buf)["event"], "pusher:pong");
    let _ = std::fs::remove_dir_all(&files.dir);
}

#[test]
fn encrypted_key_opens_with_the_passphrase_and_a_wrong_one_stops_startup() {
    let files = make_files("s3cret-pass");
    let cert = files.dir.join("cert.pem").display().to_string();
    let key = files.dir.join("key-encrypted.pem").display().to_string();
    let server = spawn(&[
        ("SOKETI_SSL_CERT", cert.clone()),
        ("SOKETI_SSL_KEY", key.clone()),
        ("SOKETI_SSL_PASS", "s3cret-pass".to_owned()),
    ]);
    wait_ready(&files, &server);
    drop(server);

    let mut bad = spawn(&[
        ("SOKETI_SSL_CERT", cert),
        ("SOKETI_SSL_KEY", key),
        ("SOKETI_SSL_PASS", "wrong".to_owned()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = bad.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a wrong passphrase must stop start-up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    let _ = bad
        .child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    assert!(stderr.contains("SOKETI_SSL_PASS"), "{stderr}");
    let _ = std::fs::remove_dir_all(&files.dir);
}
