//! The CRI services' gRPC codec: prost's, except that a request that does
//! not decode (truncated, a wrong wire type, a string that is not UTF-8)
//! is the caller's error — InvalidArgument naming what failed — rather
//! than tonic's default Internal (the gRPC status-code guide's choice for
//! parse errors, which reads as a server fault to kubelet and operators).

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with decode errors as InvalidArgument.
#[derive(Debug, Clone, Copy, Default)]
pub struct CriCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Codec for CriCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CriDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CriDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// [`ProstDecoder`] with decode errors as InvalidArgument.
#[derive(Debug, Clone, Default)]
pub struct CriDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for CriDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            crate::util::status(
                tonic::Code::InvalidArgument,
                format!("the message does not decode as {}: {e}", short_type::<U>()),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `RunPodSandboxRequest` for `berth_cri::proto::RunPodSandboxRequest`.
fn short_type<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_name_is_short() {
        assert_eq!(
            short_type::<crate::proto::VersionRequest>(),
            "VersionRequest"
        );
    }
}
