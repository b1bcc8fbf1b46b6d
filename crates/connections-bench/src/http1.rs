//! The mix's load client: one keep-alive HTTP/1.1 connection per worker
//! (hyper's connection API, `TCP_NODELAY`), the client `../shared/peers`
//! drives the product with. The load generator shares the machine's two
//! cores with the server, so its own cost is part of every figure: reqwest's
//! pool, URL parsing and header building cost about a tenth of the
//! process's CPU on the mix, which the raw floor's client (a bare
//! tokio-postgres connection) does not pay.

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One worker's connection to the server.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Connection {
    /// Connects to `base` (`http://host:port`, no path).
    pub async fn open(base: &str) -> anyhow::Result<Self> {
        let authority = base.strip_prefix("http://").with_context(|| format!("{base} is not a plain http:// URL"))?;
        let tcp = TcpStream::connect(authority).await.with_context(|| format!("connecting to {authority}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender, host: HeaderValue::from_str(authority)? })
    }

    /// Sends one request (a JSON body if given) and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&HeaderValue>,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder().method(method).uri(path).header(HOST, self.host.clone());
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        let body = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Full::new(Bytes::from(serde_json::to_vec(body)?))
            }
            None => Full::new(Bytes::new()),
        };
        self.sender.ready().await?;
        let response = self.sender.send_request(request.body(body)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
