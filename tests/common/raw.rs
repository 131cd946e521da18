//! Calls sent as raw bytes: what a client built from another protobuf
//! library (or a broken one) sends, over HTTP/2 directly or through
//! tonic with a codec that passes bytes through.

use std::net::SocketAddr;

/// A unary gRPC call sent straight over HTTP/2, as any client may send it:
/// `body` as it goes on the wire (gRPC framing included), `headers` on top
/// of the content type. Returns the call's `grpc-status` and
/// `grpc-message` (a refusal comes trailers-only: in the headers).
pub(crate) async fn raw_call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    stream.send_data(body.into(), true).unwrap();
    let response = response.await.unwrap();
    let status_of = |h: &http::HeaderMap| {
        let text = |name: &str| {
            h.get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (text("grpc-status"), text("grpc-message"))
    };
    if response.headers().contains_key("grpc-status") {
        return status_of(response.headers());
    }
    let mut answer = response.into_body();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.unwrap();
        answer.flow_control().release_capacity(chunk.len()).unwrap();
    }
    status_of(&answer.trailers().await.unwrap().expect("trailers"))
}

/// `message` framed for gRPC: uncompressed, its 4-byte length, itself.
pub(crate) fn grpc_framed(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// Sends any bytes as a gRPC message and reads the answer's bytes: what a
/// client built from another protobuf library (or a broken one) sends.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

pub(crate) async fn raw_eligibility(
    server: &super::TestServer,
    method: &str,
    body: Vec<u8>,
    headers: &[(&'static str, &'static str)],
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    let path = format!("/consent.v1.EligibilityService/{method}")
        .parse()
        .unwrap();
    grpc.unary(request, path, Raw).await.map(|r| r.into_inner())
}
