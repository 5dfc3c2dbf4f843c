//! A tiny HTTP receiver standing in for Alertmanager and for a client's
//! call-webhook endpoint: records every POST (a real server cannot be made
//! to show what it received) and answers what the test's handler says.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub type Log = Arc<Mutex<Vec<Received>>>;

/// A receiver answering 200 to everything.
pub fn receiver() -> (u16, Log) {
    receiver_with(|_| 200)
}

/// Starts the receiver; `handler` picks each answer's status (it runs
/// before the request is logged, so it may inspect the world at that time).
pub fn receiver_with(handler: impl Fn(&Received) -> u16 + Send + 'static) -> (u16, Log) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log: Log = Arc::default();
    let sink = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(clone);
            let mut headers = Vec::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                    if k == "content-length" {
                        len = v.parse().unwrap_or(0);
                    }
                    headers.push((k, v));
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let req = Received {
                headers,
                body: String::from_utf8_lossy(&body).to_string(),
                at: Instant::now(),
            };
            let status = handler(&req);
            sink.lock().expect("lock").push(req);
            let _ = stream.write_all(
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, log)
}
