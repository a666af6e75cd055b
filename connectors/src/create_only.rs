//! Create-only commits for S3 and Azure Blob: the request that makes an upload visible under
//! its final name carries `If-None-Match: *`, so the service itself refuses it (412) when an
//! object already exists there, however late that object appeared.
//!
//! object_store 0.14 has no option for this on [`MultipartStore::complete_multipart`]
//! (its own create-only multipart path, used by `copy_if_not_exists`, is crate-private), so
//! the connector gives the store an [`HttpConnector`] that adds the header to exactly one
//! kind of request:
//! - S3: `CompleteMultipartUpload` (`POST ?uploadId=`). The header is added after SigV4
//!   signing, as object_store's own create-only completion does; SigV4 only requires `host`
//!   and `x-amz-*` to be signed. AWS S3 honours it (conditional writes, 2024), and so do
//!   MinIO and moto.
//! - Azure: `Put Block List` (`PUT ?comp=blocklist`). Shared Key signs `If-None-Match`, so
//!   the request is signed again with the header ([`AzureAuthorizer`]); bearer tokens and
//!   SAS do not sign headers. Azure answers 409 `BlobAlreadyExists` (some versions 412).
//!   A commit that is refused although the blob's committed block
//!   list is exactly the one sent (a retried commit whose first answer was lost: block ids
//!   are 128 random bits per upload) is this upload's own and is answered as a success
//!   with the blob's ETag.
//!
//! [`MultipartStore::complete_multipart`]: object_store::multipart::MultipartStore::complete_multipart

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use http::{HeaderValue, Method, StatusCode, header};
use object_store::ClientOptions;
use object_store::azure::{AzureAuthorizer, AzureCredential, AzureCredentialProvider};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpService, ReqwestConnector,
};

/// Which commit request to make conditional, and how to sign it.
#[derive(Clone)]
pub(crate) enum CreateOnly {
    /// S3: `CompleteMultipartUpload`.
    S3,
    /// Azure: `Put Block List`, re-signed for `account` with the store's credentials (set
    /// once the store is built).
    Azure {
        account: String,
        credentials: Arc<OnceLock<AzureCredentialProvider>>,
    },
}

impl std::fmt::Debug for CreateOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.write_str(match self {
            Self::S3 => "CreateOnly::S3",
            Self::Azure { .. } => "CreateOnly::Azure",
        })
    }
}

impl HttpConnector for CreateOnly {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Service {
            inner,
            kind: self.clone(),
        }))
    }
}

#[derive(Debug)]
struct Service {
    inner: HttpClient,
    kind: CreateOnly,
}

fn has_query(req: &HttpRequest, key: &str, value: Option<&str>) -> bool {
    req.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == key && value.is_none_or(|want| v == want))
    })
}

/// `CompleteMultipartUpload`: the only S3 `POST` that names an upload id.
fn is_s3_completion(req: &HttpRequest) -> bool {
    req.method() == Method::POST && has_query(req, "uploadId", None)
}

/// `Put Block List`.
fn is_block_list_commit(req: &HttpRequest) -> bool {
    req.method() == Method::PUT && has_query(req, "comp", Some("blocklist"))
}

fn unknown(e: impl std::error::Error + Send + Sync + 'static) -> HttpError {
    HttpError::new(HttpErrorKind::Unknown, e)
}

/// The text of every `<tag>…</tag>` in `xml`, in order (block ids are base64: no markup
/// or entities inside).
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        out.push(after[..end].trim());
        rest = &after[end + close.len()..];
    }
    out
}

/// The committed block ids in a Get Block List answer.
fn committed_blocks(xml: &str) -> Vec<&str> {
    let Some(start) = xml.find("<CommittedBlocks>") else {
        return Vec::new();
    };
    let section = &xml[start..];
    let section = section
        .find("</CommittedBlocks>")
        .map_or(section, |end| &section[..end]);
    elements(section, "Name")
}

impl Service {
    async fn azure_credential(
        credentials: &OnceLock<AzureCredentialProvider>,
    ) -> Result<Arc<AzureCredential>, HttpError> {
        let provider = credentials
            .get()
            .ok_or_else(|| unknown(std::io::Error::other("credentials not set")))?;
        provider.get_credential().await.map_err(unknown)
    }

    fn sign(
        req: &mut HttpRequest,
        credential: &AzureCredential,
        account: &str,
    ) -> Result<(), HttpError> {
        // A SAS is in the URL already, and signs no header.
        if matches!(credential, AzureCredential::SASToken(_)) {
            return Ok(());
        }
        req.headers_mut().remove(header::AUTHORIZATION);
        AzureAuthorizer::new(credential, account)
            .try_authorize(req)
            .map_err(unknown)
    }

    /// Put Block List with `If-None-Match: *`; a refusal where the blob already holds
    /// exactly the blocks sent is this upload's earlier success.
    async fn azure_commit(
        &self,
        mut req: HttpRequest,
        account: &str,
        credentials: &OnceLock<AzureCredentialProvider>,
    ) -> Result<HttpResponse, HttpError> {
        let credential = Self::azure_credential(credentials).await?;
        req.headers_mut()
            .insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        Self::sign(&mut req, &credential, account)?;
        // The block list sent (a small XML body held in memory: cloning it is cheap).
        let body = http_body_util::BodyExt::collect(req.body().clone())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let sent: Vec<String> = std::str::from_utf8(&body)
            .map(|xml| {
                elements(xml, "Uncommitted")
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let uri = req.uri().clone();
        let response = self.inner.execute(req).await?;
        if !matches!(
            response.status(),
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT | StatusCode::BAD_REQUEST
        ) || sent.is_empty()
        {
            return Ok(response);
        }
        match self
            .committed_by_this_upload(&uri, &sent, &credential, account)
            .await
        {
            Some(ours) => Ok(ours),
            None => Ok(response),
        }
    }

    /// Asks for the blob's committed block list; if it is `sent`, an answer as the
    /// successful commit would have given (201 with the blob's ETag).
    async fn committed_by_this_upload(
        &self,
        commit: &http::Uri,
        sent: &[String],
        credential: &AzureCredential,
        account: &str,
    ) -> Option<HttpResponse> {
        // The commit's URL already holds `comp=blocklist` (and a SAS, if any).
        let uri: http::Uri = format!("{commit}&blocklisttype=committed").parse().ok()?;
        let mut req = http::Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(HttpRequestBody::empty())
            .ok()?;
        Self::sign(&mut req, credential, account).ok()?;
        let response = self.inner.execute(req).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let (parts, body) = response.into_parts();
        let body = body.bytes().await.ok()?;
        let xml = std::str::from_utf8(&body).ok()?;
        if committed_blocks(xml) != sent {
            return None;
        }
        let mut ours = http::Response::builder().status(StatusCode::CREATED);
        for name in [header::ETAG, header::LAST_MODIFIED] {
            if let Some(v) = parts.headers.get(&name) {
                ours = ours.header(name, v);
            }
        }
        ours.body(Vec::<u8>::new().into()).ok()
    }
}

#[async_trait]
impl HttpService for Service {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        match &self.kind {
            CreateOnly::S3 if is_s3_completion(&req) => {
                req.headers_mut()
                    .insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
                self.inner.execute(req).await
            }
            CreateOnly::Azure {
                account,
                credentials,
            } if is_block_list_commit(&req) => self.azure_commit(req, account, credentials).await,
            _ => self.inner.execute(req).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> HttpRequest {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(HttpRequestBody::empty())
            .unwrap()
    }

    #[test]
    fn only_the_commit_requests_are_made_conditional() {
        let s3 = |m, u| is_s3_completion(&request(m, u));
        assert!(s3(Method::POST, "http://h/b/k?uploadId=abc"));
        assert!(!s3(Method::POST, "http://h/b/k?uploads"), "create");
        assert!(
            !s3(Method::PUT, "http://h/b/k?partNumber=1&uploadId=abc"),
            "part"
        );
        assert!(!s3(Method::POST, "http://h/b?delete"), "bulk delete");
        assert!(
            !s3(Method::POST, "http://h/b/uploadId=abc"),
            "a key, not a query"
        );
        let az = |m, u| is_block_list_commit(&request(m, u));
        assert!(az(Method::PUT, "http://h/a/c/k?comp=blocklist"));
        assert!(az(Method::PUT, "http://h/a/c/k?sv=1&comp=blocklist&sig=x"));
        assert!(
            !az(Method::PUT, "http://h/a/c/k?comp=block&blockid=x"),
            "block"
        );
        assert!(!az(Method::GET, "http://h/a/c/k?comp=blocklist"), "read");
        assert!(!az(Method::PUT, "http://h/a/c/k"), "single put");
    }

    #[test]
    fn committed_block_lists_are_read_only_from_their_section() {
        let xml = "<?xml version=\"1.0\"?><BlockList><CommittedBlocks>\
            <Block><Name>QUFB</Name><Size>3</Size></Block>\
            <Block><Name> QkJC </Name><Size>3</Size></Block></CommittedBlocks>\
            <UncommittedBlocks><Block><Name>Q0ND</Name><Size>3</Size></Block>\
            </UncommittedBlocks></BlockList>";
        assert_eq!(committed_blocks(xml), ["QUFB", "QkJC"]);
        assert!(committed_blocks("<BlockList><CommittedBlocks /></BlockList>").is_empty());
        assert!(committed_blocks("<BlockList><Name>QUFB</Name></BlockList>").is_empty());
        // Truncated or hostile answers give no ids rather than a panic.
        assert!(committed_blocks("<CommittedBlocks><Name>QUFB").is_empty());
        assert_eq!(
            elements(
                "<BlockList>\n\t<Uncommitted>QUFB</Uncommitted>\n</BlockList>",
                "Uncommitted"
            ),
            ["QUFB"]
        );
    }
}
