//! Admission, before a request body is read (DESIGN.md rule 9): a tower
//! layer in front of every gRPC service looks the method up, checks the
//! bearer token for its roles, and answers UNAUTHENTICATED or
//! PERMISSION_DENIED from the headers alone, so a caller without a valid
//! token cannot make the server buffer or decode a single message. An
//! admitted call carries its [`Actor`] to the handler. An admitted
//! EligibilityService call is answered here, by [`Eligibility`], and an
//! admitted Grant or Withdraw by [`Writes`], without tonic's router and
//! codec (the hot paths; see their modules).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::eligibility::{Eligibility, Method};
use super::writes::{TOO_LARGE, Write, Writes};
use crate::auth::{Auth, Role};

/// Who is calling: the name of the token (empty when auth is off).
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub(crate) String);

/// When the caller stops waiting (`grpc-timeout`), if it said.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(pub(crate) Instant);

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m,
/// u, n), per the gRPC HTTP/2 protocol.
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Which roles may call a gRPC method; `None`: open (health, reflection).
fn roles(path: &str) -> Option<&'static [Role]> {
    use Role::*;
    const ANY: &[Role] = &[Check, Write, Audit, Admin];
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Some(ANY);
    };
    Some(match (service, method) {
        ("grpc.health.v1.Health", _) => return None,
        (s, _) if s.starts_with("grpc.reflection.") => return None,
        ("consent.v1.EligibilityService", _) => &[Check],
        (
            "consent.v1.ConsentsService",
            "Grant"
            | "Withdraw"
            | "Import"
            | "IssueUnsubscribeLink"
            | "IssuePreferenceLink"
            | "IssueConfirmationLink"
            | "SetAddresses"
            | "ClearUndeliverable",
        ) => &[Write],
        (
            "consent.v1.ConsentsService",
            "GetContact" | "GetHistory" | "ExportContact" | "GetAddress" | "GetReceipt",
        ) => &[Write, Audit],
        ("consent.v1.ConsentsService", "EraseContact") => &[Admin],
        ("consent.v1.ConsentsService", "ExportStates") | ("consent.v1.ChangesService", _) => {
            &[Watch, Audit]
        }
        ("consent.v1.CatalogService", "ApplyCatalog") => &[Admin],
        ("consent.v1.CatalogService", "GetWordings") => &[Write, Audit, Admin],
        // GetCatalog, and any method this build does not know: any token.
        _ => ANY,
    })
}

/// The admission layer over the gRPC router.
#[derive(Clone)]
pub(crate) struct AdmissionLayer {
    auth: Auth,
    eligibility: Eligibility,
    writes: Writes,
}

impl AdmissionLayer {
    pub(crate) fn new(auth: Auth, eligibility: Eligibility, writes: Writes) -> Self {
        Self {
            auth,
            eligibility,
            writes,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            auth: self.auth.clone(),
            eligibility: self.eligibility.clone(),
            writes: self.writes.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    auth: Auth,
    eligibility: Eligibility,
    writes: Writes,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Admission<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let actor = match roles(path) {
            None => String::new(),
            Some(roles) => match self.auth.admit(request.headers(), roles) {
                Ok(actor) => actor.to_owned(),
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            },
        };
        if let Some(method) = Method::of(path) {
            let eligibility = self.eligibility.clone();
            return Box::pin(async move { Ok(eligibility.call(method, request).await) });
        }
        // Only writes use a deadline, only a named token an actor.
        if path.starts_with("/consent.v1.ConsentsService/") {
            let deadline = request
                .headers()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(grpc_timeout)
                .and_then(|t| Instant::now().checked_add(t));
            if let Some(method) = Write::of(path) {
                let writes = self.writes.clone();
                return Box::pin(
                    async move { Ok(writes.call(method, request, actor, deadline).await) },
                );
            }
            if let Some(d) = deadline {
                request.extensions_mut().insert(Deadline(d));
            }
        }
        if !actor.is_empty() {
            request.extensions_mut().insert(Actor(actor));
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map(too_large_is_resource_exhausted) })
    }
}

/// tonic answers a message over its method's decoding limit OUT_OF_RANGE
/// (no handler of this server answers that code); the gRPC spec's code for
/// it is RESOURCE_EXHAUSTED (DESIGN.md §8), with a short message. The status
/// of a refused call travels in the response's headers (trailers-only), for
/// a unary call and for a stream alike (an import row over the limit ends
/// the stream before any answer).
fn too_large_is_resource_exhausted(response: http::Response<Body>) -> http::Response<Body> {
    const OUT_OF_RANGE: &str = "11";
    if response
        .headers()
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == OUT_OF_RANGE.as_bytes())
    {
        return tonic::Status::resource_exhausted(TOO_LARGE).into_http();
    }
    response
}

/// The deadline the admission layer read from a request, if any.
pub(crate) fn deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    request.extensions().get::<Deadline>().map(|d| d.0)
}

/// The actor the admission layer attached to a request.
pub(crate) fn actor<T>(request: &tonic::Request<T>) -> &str {
    request
        .extensions()
        .get::<Actor>()
        .map_or("", |a| a.0.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "100", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_method_has_its_roles() {
        use Role::*;
        assert_eq!(
            roles("/consent.v1.EligibilityService/CanSend"),
            Some(&[Check][..])
        );
        assert_eq!(
            roles("/consent.v1.ConsentsService/Grant"),
            Some(&[Write][..])
        );
        assert_eq!(
            roles("/consent.v1.ConsentsService/ExportContact"),
            Some(&[Write, Audit][..])
        );
        assert_eq!(
            roles("/consent.v1.ConsentsService/ExportStates"),
            Some(&[Watch, Audit][..])
        );
        assert_eq!(
            roles("/consent.v1.ConsentsService/EraseContact"),
            Some(&[Admin][..])
        );
        assert_eq!(
            roles("/consent.v1.CatalogService/ApplyCatalog"),
            Some(&[Admin][..])
        );
        assert_eq!(
            roles("/consent.v1.CatalogService/GetCatalog").map(<[_]>::len),
            Some(4)
        );
        assert_eq!(roles("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            roles("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            roles("/nope").map(<[_]>::len),
            Some(4),
            "unknown paths need a token"
        );
    }
}
