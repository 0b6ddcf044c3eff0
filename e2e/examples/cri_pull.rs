//! Pulls an image through containerd's CRI `ImageService.PullImage`, the
//! RPC kubelet uses, so the end-to-end script exercises the kubelet path
//! (which reads the daemon's registry `config_path`) and not only `ctr`.
//!
//! Usage: cri_pull SOCKET IMAGE [USER:PASSWORD]
//!
//! The three messages are written out by hand (field numbers from the CRI
//! `runtime.v1` API) rather than generated, to keep the test crate free of
//! the whole CRI proto.

use anyhow::Context;
use tonic::codegen::http::uri::PathAndQuery;

#[derive(Clone, PartialEq, prost::Message)]
struct ImageSpec {
    #[prost(string, tag = "1")]
    image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AuthConfig {
    #[prost(string, tag = "1")]
    username: String,
    #[prost(string, tag = "2")]
    password: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PullImageRequest {
    #[prost(message, optional, tag = "1")]
    image: Option<ImageSpec>,
    #[prost(message, optional, tag = "2")]
    auth: Option<AuthConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PullImageResponse {
    #[prost(string, tag = "1")]
    image_ref: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(image)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: cri_pull SOCKET IMAGE [USER:PASSWORD]");
    };
    let auth = args.next().map(|creds| {
        let (username, password) = creds.split_once(':').unwrap_or((&creds, ""));
        AuthConfig {
            username: username.to_string(),
            password: password.to_string(),
        }
    });
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = tonic::transport::Endpoint::try_from("http://cri.invalid")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .context("connecting to the CRI socket")?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("CRI service not ready")?;
    let request = PullImageRequest {
        image: Some(ImageSpec { image }),
        auth,
    };
    let response = grpc
        .unary(
            tonic::Request::new(request),
            PathAndQuery::from_static("/runtime.v1.ImageService/PullImage"),
            tonic_prost::ProstCodec::<PullImageRequest, PullImageResponse>::default(),
        )
        .await
        .context("PullImage")?;
    println!("{}", response.into_inner().image_ref);
    Ok(())
}
