//! The HTTPS client a gateway syncs with: posts batches, reads what the cloud holds.
//!
//! Every call is bounded by the client's timeout, from connecting to the last byte of the
//! answer, and answers are read up to [`RESPONSE_BYTES_MAX`]. Failures are sorted for the caller:
//! [`PostError::Unavailable`] (no connection, timeout, 5xx, 408, 429, an answer that is not what
//! the API promises) is worth retrying with backoff; [`PostError::Stale`] means this gateway is
//! deposed; [`PostError::Rejected`] (any other 4xx) will not get better by retrying the same
//! request. The client keeps connections alive between calls and is cheap to clone.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use verge_pki::ClientAuth;

use crate::CloudError;
use crate::api::{
    AcceptedBatch, Batch, BatchAck, BatchesPage, ErrorBody, Fault, PATH_BATCHES, PATH_FAULTS,
    PATH_HEALTH, PATH_SUMMARY, PATH_WINDOWS, Summary, Window, WindowsPage,
};

/// The largest answer read, in bytes (a full page of windows fits).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// How much of an unexpected answer is quoted in an error.
const QUOTE_CHARS_MAX: usize = 200;
/// How long an idle kept-alive connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// What the cloud did with a batch it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    /// Its key was new: `stored` windows stored, `duplicates` already held.
    Stored {
        /// Windows stored.
        stored: u64,
        /// Windows already held.
        duplicates: u64,
    },
    /// Its key was already stored; the cloud holds it once.
    Duplicate,
}

/// Why a batch was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// Fencing: the cloud has accepted a higher term for this cluster, so the sender is no
    /// longer the gateway. Not retryable with this term.
    #[error(
        "the cloud refused term {term}: it has accepted term {highest} for this cluster, so this \
         node is no longer the gateway"
    )]
    Stale {
        /// The term the batch carried.
        term: u64,
        /// The highest term the cloud has accepted.
        highest: u64,
    },
    /// A 4xx other than fencing, timeouts and rate limits: the request itself is wrong (token,
    /// body, size). Retrying it unchanged will not help.
    #[error("the cloud rejected the request with HTTP {status}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// What the cloud said.
        message: String,
    },
    /// The cloud could not be reached or did not answer properly; retry with backoff.
    #[error("the cloud is unavailable: {0}")]
    Unavailable(String),
}

impl PostError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PostError::Unavailable(_))
    }
}

/// Why a read (summary, windows, health) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A 4xx: the query or credentials are wrong.
    #[error("the cloud rejected the query with HTTP {status}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// What the cloud said.
        message: String,
    },
    /// The cloud could not be reached or did not answer properly.
    #[error("the cloud is unavailable: {0}")]
    Unavailable(String),
}

/// An HTTPS client of one cloud.
#[derive(Clone)]
pub struct CloudClient {
    /// `https://host:port`, without a trailing slash.
    base: String,
    token: Option<String>,
    timeout: Duration,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for CloudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("CloudClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What went wrong in one exchange, before it is sorted into the caller's error type.
enum Failure {
    Unavailable(String),
    Status(StatusCode, Bytes),
}

impl CloudClient {
    /// A client of the cloud at `url` (`https://host:port`) that trusts the certificates in
    /// `ca_pem` (the cloud's CA, or its self-signed certificate), sends `token` as a bearer
    /// token if given, and gives each call `timeout` from connect to last byte.
    pub fn new(
        url: &str,
        ca_pem: &Path,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, CloudError> {
        let tls = crate::tls::client_config(ca_pem, None)?;
        Self::with_tls(url, tls, token, timeout)
    }

    /// Like [`CloudClient::new`], also presenting a client certificate (for a cloud that accepts
    /// certificates from the cluster CA instead of, or as well as, a token).
    pub fn with_client_cert(
        url: &str,
        ca_pem: &Path,
        auth: ClientAuth,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, CloudError> {
        let tls = crate::tls::client_config(ca_pem, Some(auth))?;
        Self::with_tls(url, tls, token, timeout)
    }

    fn with_tls(
        url: &str,
        tls: ClientConfig,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, CloudError> {
        let bad = |detail: &str| CloudError::Url {
            url: url.to_owned(),
            detail: detail.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the cloud is reached over https:// only"));
        }
        if uri.authority().is_none() {
            return Err(bad("no host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "give the base URL only, like https://cloud.example:8443",
            ));
        }
        let base = url.trim_end_matches('/').to_owned();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        Ok(Self {
            base,
            token,
            timeout,
            http,
        })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Posts a batch; `Ok` only once the cloud has it durably (now or before).
    pub async fn post_batch(&self, batch: &Batch) -> Result<PostOutcome, PostError> {
        let body = serde_json::to_vec(batch).map_err(|e| PostError::Rejected {
            status: 0,
            message: format!("the batch cannot be encoded: {e}"),
        })?;
        match self
            .exchange(Method::POST, PATH_BATCHES, Bytes::from(body))
            .await
        {
            Ok(body) => match serde_json::from_slice::<BatchAck>(&body) {
                Ok(BatchAck::Stored { stored, duplicates }) => {
                    Ok(PostOutcome::Stored { stored, duplicates })
                }
                Ok(BatchAck::Duplicate) => Ok(PostOutcome::Duplicate),
                Err(e) => Err(PostError::Unavailable(format!(
                    "{} answered 200 with a body that is not an acknowledgement ({e}): {}",
                    self.base,
                    quote(&body)
                ))),
            },
            Err(Failure::Unavailable(why)) => Err(PostError::Unavailable(why)),
            Err(Failure::Status(StatusCode::CONFLICT, body)) => {
                match serde_json::from_slice::<ErrorBody>(&body) {
                    Ok(ErrorBody {
                        highest: Some(highest),
                        term,
                        ..
                    }) => Err(PostError::Stale {
                        term: term.unwrap_or(batch.term),
                        highest,
                    }),
                    _ => Err(PostError::Unavailable(format!(
                        "{} answered 409 without the terms of a fencing refusal: {}",
                        self.base,
                        quote(&body)
                    ))),
                }
            }
            Err(Failure::Status(status, body)) => Err(sort_status(&self.base, status, &body)
                .map_or_else(PostError::Unavailable, |message| PostError::Rejected {
                    status: status.as_u16(),
                    message,
                })),
        }
    }

    /// What the cloud holds, per cluster, node and stream.
    pub async fn summary(&self) -> Result<Summary, QueryError> {
        self.get_json(PATH_SUMMARY.to_owned()).await
    }

    /// The windows of `stream` with `from <= seq <= to`, in order, fetched page by page. The
    /// cloud picks the cluster that holds the stream; see [`CloudClient::windows_of_cluster`]
    /// when several do.
    pub async fn windows(
        &self,
        stream: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Window>, QueryError> {
        self.windows_query(None, stream, from, to).await
    }

    /// Like [`CloudClient::windows`], for one cluster's copy of the stream.
    pub async fn windows_of_cluster(
        &self,
        cluster: &str,
        stream: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Window>, QueryError> {
        self.windows_query(Some(cluster), stream, from, to).await
    }

    async fn windows_query(
        &self,
        cluster: Option<&str>,
        stream: &str,
        mut from: u64,
        to: u64,
    ) -> Result<Vec<Window>, QueryError> {
        let mut out = Vec::new();
        loop {
            let mut path = format!(
                "{PATH_WINDOWS}?stream={}&from={from}&to={to}",
                percent_encode(stream)
            );
            if let Some(c) = cluster {
                path.push_str("&cluster=");
                path.push_str(&percent_encode(c));
            }
            let page: WindowsPage = self.get_json(path).await?;
            out.extend(page.windows);
            match page.next_from {
                Some(next) if next > from => from = next,
                Some(_) => {
                    return Err(QueryError::Unavailable(format!(
                        "{} paged windows backwards",
                        self.base
                    )));
                }
                None => return Ok(out),
            }
        }
    }

    /// One page of `cluster`'s batch log (`GET /v1/batches`): the batches it accepted with an
    /// acceptance number above `after` (from the start when `None`), in acceptance order, at
    /// most `limit` of them (the cloud's default, 1000, when `None`; at most 10,000).
    pub async fn batches(
        &self,
        cluster: &str,
        after: Option<u64>,
        limit: Option<usize>,
    ) -> Result<BatchesPage, QueryError> {
        let mut path = format!("{PATH_BATCHES}?cluster={}", percent_encode(cluster));
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        self.get_json(path).await
    }

    /// `cluster`'s whole batch log, in acceptance order, fetched page by page.
    pub async fn all_batches(&self, cluster: &str) -> Result<Vec<AcceptedBatch>, QueryError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.batches(cluster, after, None).await?;
            out.extend(page.batches);
            match page.next_after {
                Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
                Some(_) => {
                    return Err(QueryError::Unavailable(format!(
                        "{} paged the batch log backwards",
                        self.base
                    )));
                }
                None => return Ok(out),
            }
        }
    }

    /// The fault the cloud is injecting (`GET /v1/faults`). A cloud started without fault
    /// injection refuses with [`QueryError::Rejected`] (403).
    pub async fn fault(&self) -> Result<Fault, QueryError> {
        self.get_json(PATH_FAULTS.to_owned()).await
    }

    /// Puts `fault` in force on the cloud (`POST /v1/faults`) and returns the fault now in force
    /// (with the default delay filled in). A cloud started without fault injection refuses with
    /// [`QueryError::Rejected`] (403), as it does a fault it finds invalid (400).
    pub async fn set_fault(&self, fault: Fault) -> Result<Fault, QueryError> {
        let body = serde_json::to_vec(&fault).map_err(|e| QueryError::Rejected {
            status: 0,
            message: format!("the fault cannot be encoded: {e}"),
        })?;
        let body = self
            .exchange(Method::POST, PATH_FAULTS, Bytes::from(body))
            .await
            .map_err(|f| self.query_error(f))?;
        serde_json::from_slice(&body).map_err(|e| {
            QueryError::Unavailable(format!(
                "{}{PATH_FAULTS} answered 200 with a body that is not a fault ({e}): {}",
                self.base,
                quote(&body)
            ))
        })
    }

    /// Whether the cloud answers `/healthz` with 200.
    pub async fn health(&self) -> Result<(), QueryError> {
        self.exchange(Method::GET, PATH_HEALTH, Bytes::new())
            .await
            .map(|_| ())
            .map_err(|f| self.query_error(f))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: String) -> Result<T, QueryError> {
        let body = self
            .exchange(Method::GET, &path, Bytes::new())
            .await
            .map_err(|f| self.query_error(f))?;
        serde_json::from_slice(&body).map_err(|e| {
            QueryError::Unavailable(format!(
                "{}{path} answered 200 with a body that does not parse ({e}): {}",
                self.base,
                quote(&body)
            ))
        })
    }

    fn query_error(&self, f: Failure) -> QueryError {
        match f {
            Failure::Unavailable(why) => QueryError::Unavailable(why),
            Failure::Status(status, body) => sort_status(&self.base, status, &body).map_or_else(
                QueryError::Unavailable,
                |message| QueryError::Rejected {
                    status: status.as_u16(),
                    message,
                },
            ),
        }
    }

    /// One request, bounded by the timeout from connect to last byte; `Ok` only for a 200.
    async fn exchange(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, Failure> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Failure::Unavailable(format!("cannot build a request to {url}: {e}")))?;
        let call = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| Failure::Unavailable(format!("{url}: {}", chain(&e))))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| {
                    Failure::Unavailable(format!("{url}: reading the answer failed: {e}"))
                })?
                .to_bytes();
            if status == StatusCode::OK {
                Ok(body)
            } else {
                Err(Failure::Status(status, body))
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Unavailable(format!(
                "{url}: no complete answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// Sorts a non-200, non-409 status: `Ok(message)` for a request the cloud will keep refusing
/// (4xx but 408 and 429, and 3xx), `Err(reason)` for one worth retrying.
fn sort_status(base: &str, status: StatusCode, body: &[u8]) -> Result<String, String> {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| quote(body));
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_informational()
        || status.is_success();
    if retryable {
        Err(format!("{base} answered HTTP {status}: {message}"))
    } else {
        Ok(message)
    }
}

/// An error and its causes, `: `-separated (hyper's own message is only "client error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A bounded, printable quote of a body.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut q: String = text.chars().take(QUOTE_CHARS_MAX).collect();
    if text.chars().count() > QUOTE_CHARS_MAX {
        q.push('…');
    }
    format!("{q:?}")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sort_into_retryable_and_not() {
        let body = br#"{"error":"wrong bearer token"}"#;
        assert_eq!(
            sort_status("b", StatusCode::UNAUTHORIZED, body),
            Ok("wrong bearer token".into())
        );
        assert!(sort_status("b", StatusCode::INTERNAL_SERVER_ERROR, b"x").is_err());
        assert!(sort_status("b", StatusCode::TOO_MANY_REQUESTS, b"").is_err());
        assert!(sort_status("b", StatusCode::PAYLOAD_TOO_LARGE, b"").is_ok());
    }

    #[test]
    fn streams_are_encoded_for_a_query() {
        assert_eq!(
            percent_encode("b1/aggregates/n s"),
            "b1%2Faggregates%2Fn%20s"
        );
    }

    #[test]
    fn only_an_https_base_url_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) =
            crate::tls::ensure_self_signed(dir.path(), "127.0.0.1".parse().expect("ip"))
                .expect("cert");
        let t = Duration::from_secs(1);
        for bad in ["http://127.0.0.1:1", "https://127.0.0.1:1/v1", "nonsense"] {
            let err = CloudClient::new(bad, &cert, None, t).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
        CloudClient::new("https://127.0.0.1:1/", &cert, None, t).expect("ok");
    }
}
