//! Loopback stand-ins for the 1Password Events API and Devo's HTTP receiver,
//! so harness tests can run the collector end to end without the internet.

pub mod dataset;
pub mod devo;
pub mod onepassword;

pub use dataset::Dataset;
pub use devo::{DevoEmulator, DevoOptions, DevoRequest};
pub use onepassword::{OnePasswordEmulator, OnePasswordOptions, RecordedRequest};

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tiny_http::{Header, Request, Response, Server};

/// A few workers, so one slow client cannot stall every other request.
const WORKERS: usize = 4;

/// A tiny_http server on 127.0.0.1 plus the threads draining it.
/// Dropping it wakes every worker and waits for them.
pub(crate) struct Background {
    server: Arc<Server>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Background {
    pub(crate) fn spawn<H>(name: &str, handler: H) -> io::Result<Self>
    where
        H: Fn(Request) + Send + Sync + 'static,
    {
        let server = Server::http("127.0.0.1:0").map_err(io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("emulator is not listening on TCP"))?;
        // Built before spawning so an error part-way still stops started workers.
        let mut background = Background {
            server: Arc::new(server),
            stopping: Arc::new(AtomicBool::new(false)),
            workers: Vec::with_capacity(WORKERS),
            addr,
        };
        let handler = Arc::new(handler);
        for i in 0..WORKERS {
            let server = Arc::clone(&background.server);
            let stopping = Arc::clone(&background.stopping);
            let handler = Arc::clone(&handler);
            let worker = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || serve(&server, &stopping, &*handler))?;
            background.workers.push(worker);
        }
        Ok(background)
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(server: &Server, stopping: &AtomicBool, handler: &dyn Fn(Request)) {
    loop {
        match server.recv() {
            Ok(request) => handler(request),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            // A failed accept on one connection; keep serving the rest.
            Err(_) => continue,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Each unblock releases exactly one waiting recv().
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Shared state is read by tests while workers write it; a panicking test
/// thread must not make the emulator unusable, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a handler decided to answer.
pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
}

impl Reply {
    pub(crate) fn json(status: u16, body: String) -> Self {
        Reply {
            status,
            body,
            content_type: "application/json",
        }
    }

    pub(crate) fn text(status: u16, body: &str) -> Self {
        Reply {
            status,
            body: body.to_owned(),
            content_type: "text/plain; charset=utf-8",
        }
    }

    pub(crate) fn send(self, request: Request) {
        let mut response = Response::from_string(self.body).with_status_code(self.status);
        if let Ok(header) = Header::from_bytes("Content-Type", self.content_type) {
            response = response.with_header(header);
        }
        // The client may already have gone; nothing useful to do about it.
        let _ = request.respond(response);
    }
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Io,
}

impl BodyError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge => 413,
            BodyError::Io => 400,
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes.
pub(crate) fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|_| BodyError::Io)?;
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(body)
}

/// First value of a header, matched case-insensitively.
pub(crate) fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Decodes `%XX` escapes; `+` stays literal (RFC 3986, not form encoding).
/// `None` for a truncated or non-hex escape.
pub(crate) fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A blocking HTTP/1.1 client over `TcpStream`, only for these tests.
#[cfg(test)]
pub(crate) mod test_client {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub struct TestResponse {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl TestResponse {
        pub fn text(&self) -> String {
            String::from_utf8(self.body.clone()).expect("response body is UTF-8")
        }

        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("response body is JSON")
        }

        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends one request on a fresh connection and reads until the server closes it.
    pub fn send(
        base_url: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> TestResponse {
        let authority = base_url.strip_prefix("http://").expect("http base URL");
        let mut stream = TcpStream::connect(authority).expect("connect to emulator");
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .expect("write request head");
        stream.write_all(body).expect("write request body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read response");
        parse(&raw)
    }

    pub fn post_json(base_url: &str, path: &str, token: &str, body: &str) -> TestResponse {
        let auth = format!("Bearer {token}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        send(base_url, "POST", path, &headers, body.as_bytes())
    }

    fn parse(raw: &[u8]) -> TestResponse {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response has a header block");
        let head = std::str::from_utf8(&raw[..split]).expect("ASCII response head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut response = TestResponse {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        };
        if response
            .header("Transfer-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            response.body = dechunk(&response.body);
        }
        response
    }

    fn dechunk(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line_end = data
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size_text = std::str::from_utf8(&data[..line_end]).expect("chunk size");
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).expect("hex chunk size");
            data = &data[line_end + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&data[..size]);
            data = &data[size + 2..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_and_rejects_bad_ones() {
        assert_eq!(
            percent_decode("a%20b+c%7B%22%E6%9D%B1").unwrap(),
            "a b+c{\"東".as_bytes()
        );
        assert_eq!(percent_decode("100%"), None);
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn background_server_stops_on_drop() {
        let server = Background::spawn("probe", |request| Reply::text(200, "up").send(request))
            .expect("start server");
        let base = server.base_url();
        assert_eq!(test_client::send(&base, "GET", "/", &[], b"").text(), "up");
        drop(server);
        // tiny_http closes its listener on its own thread just after drop.
        let authority = base.trim_start_matches("http://");
        let closed = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            std::net::TcpStream::connect(authority).is_err()
        });
        assert!(closed, "listener still open after drop");
    }
}
