//! Admission, before a request body is read (DESIGN.md rule 9): a tower
//! layer in front of every gRPC service looks the method up, checks the
//! bearer token for its roles, and answers UNAUTHENTICATED or
//! PERMISSION_DENIED from the headers alone, so a caller without a valid
//! token cannot make the server buffer or decode a single message. An
//! admitted call carries its [`Actor`] to the handler.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::auth::{Auth, Role};

/// Who is calling: the name of the token (empty when auth is off).
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub(crate) String);

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
        ("consent.v1.Eligibility", _) => &[Check],
        ("consent.v1.Consents", "Grant" | "Withdraw" | "Import" | "IssueUnsubscribeLink") => {
            &[Write]
        }
        ("consent.v1.Consents", "GetContact" | "GetHistory" | "ExportContact") => &[Write, Audit],
        ("consent.v1.Consents", "EraseContact") => &[Admin],
        ("consent.v1.Catalog", "ApplyCatalog") => &[Admin],
        ("consent.v1.Catalog", "GetWordings") => &[Write, Audit, Admin],
        // GetCatalog, and any method this build does not know: any token.
        _ => ANY,
    })
}

/// The admission layer over the gRPC router.
#[derive(Clone)]
pub(crate) struct AdmissionLayer {
    auth: Auth,
}

impl AdmissionLayer {
    pub(crate) fn new(auth: Auth) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    auth: Auth,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let actor = match roles(request.uri().path()) {
            None => String::new(),
            Some(roles) => match self.auth.admit(request.headers(), roles) {
                Ok(actor) => actor.to_owned(),
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            },
        };
        request.extensions_mut().insert(Actor(actor));
        Box::pin(self.inner.call(request))
    }
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
    fn every_method_has_its_roles() {
        use Role::*;
        assert_eq!(roles("/consent.v1.Eligibility/CanSend"), Some(&[Check][..]));
        assert_eq!(roles("/consent.v1.Consents/Grant"), Some(&[Write][..]));
        assert_eq!(
            roles("/consent.v1.Consents/ExportContact"),
            Some(&[Write, Audit][..])
        );
        assert_eq!(
            roles("/consent.v1.Consents/EraseContact"),
            Some(&[Admin][..])
        );
        assert_eq!(
            roles("/consent.v1.Catalog/ApplyCatalog"),
            Some(&[Admin][..])
        );
        assert_eq!(
            roles("/consent.v1.Catalog/GetCatalog").map(<[_]>::len),
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
