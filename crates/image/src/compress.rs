//! Layer decompression chosen by content (gzip, zstd or plain tar), whatever the media type says.

use std::io::{self, BufRead, BufReader, Read};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly multi-member).
    Gzip,
    /// zstd.
    Zstd,
}

/// Wraps `reader` in the decoder its first bytes call for.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut buffered = BufReader::with_capacity(256 << 10, reader);
    let head = buffered.fill_buf()?;
    if head.starts_with(GZIP_MAGIC) {
        Ok((Compression::Gzip, Box::new(flate2::bufread::MultiGzDecoder::new(buffered))))
    } else if head.starts_with(ZSTD_MAGIC) {
        Ok((Compression::Zstd, Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)))
    } else {
        Ok((Compression::None, Box::new(buffered)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sniffs_each_compression() {
        let plain = b"plain text".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        for (data, want) in
            [(plain.clone(), Compression::None), (gz, Compression::Gzip), (zst, Compression::Zstd)]
        {
            let (c, mut r) = decompress(&data[..]).unwrap();
            assert_eq!(c, want);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, plain);
        }
    }
}
