//! The codec of every generated client and server: prost's, except that a
//! message that does not decode (invalid UTF-8 in a string field, a
//! truncated field) is INVALID_ARGUMENT naming the message and field, e.g.
//! `Image.name: invalid string value: data is not UTF-8 encoded`, rather
//! than prost's INTERNAL. A server receiving such a request was sent a bad
//! argument, not failed; a client sees the same code for a bad answer,
//! which only a broken server sends.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost's codec, with decode failures as INVALID_ARGUMENT.
pub struct ArgumentCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for ArgumentCodec<T, U> {
    fn default() -> Self {
        ArgumentCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for ArgumentCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ArgumentDecoder(self.0.decoder())
    }
}

/// prost's decoder, with decode failures as INVALID_ARGUMENT.
pub struct ArgumentDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            tonic::Code::Internal => Status::invalid_argument(status.message()),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
