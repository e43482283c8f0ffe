//! Decoders, scaler/resampler and encoders for inputs we cannot pass through: video becomes
//! H.264 (libx264, yuv420p, a keyframe forced every segment target) and audio becomes AAC-LC
//! 48 kHz stereo in 1024-sample frames.
//!
//! Both transcoders take demuxed packets (timestamps in the input stream's time base, already
//! shifted so the run starts near zero) and append encoded packets, in the encoder's time base
//! (`VIDEO_TIME_BASE` / `AUDIO_TIME_BASE`), to a caller-owned vector.

use std::time::Duration;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::codec::{self, encoder};
use ffmpeg_next::format::{Pixel, Sample};
use ffmpeg_next::software::{resampling, scaling};
use ffmpeg_next::util::error::EAGAIN;
use ffmpeg_next::util::frame;
use ffmpeg_next::{ChannelLayout, Dictionary, Packet, Rational, Rescale};
use tracing::warn;

use super::IngestError;

/// Time base of the transcoded video stream (the MPEG 90 kHz clock).
pub(super) const VIDEO_TIME_BASE: Rational = Rational(1, 90_000);
/// Time base of the transcoded audio stream: one tick per sample.
pub(super) const AUDIO_TIME_BASE: Rational = Rational(1, AUDIO_RATE);
const AUDIO_RATE: i32 = 48_000;
const AUDIO_BIT_RATE: usize = 128_000;

/// Decodes one video stream and re-encodes it with libx264.
pub(super) struct VideoTranscoder {
    decoder: ffmpeg::decoder::Video,
    scaler: Option<scaling::Context>,
    encoder: encoder::Video,
    in_tb: Rational,
    width: u32,
    height: u32,
    /// Next forced keyframe, in VIDEO_TIME_BASE.
    next_key: i64,
    /// Keyframe spacing (the segment target), in VIDEO_TIME_BASE.
    key_step: i64,
    last_pts: Option<i64>,
}

impl VideoTranscoder {
    /// Opens a decoder for `params` and a libx264 encoder producing the same picture size
    /// (rounded down to even), with a keyframe forced every `segment_target`.
    pub(super) fn new(
        params: codec::Parameters,
        in_tb: Rational,
        frame_rate: Rational,
        segment_target: Duration,
        live: bool,
    ) -> Result<VideoTranscoder, IngestError> {
        let ctx = codec::Context::from_parameters(params)
            .map_err(|e| IngestError::Ffmpeg("reading video codec parameters", e))?;
        let decoder = ctx
            .decoder()
            .video()
            .map_err(|e| IngestError::Unsupported {
                what: format!("no decoder for the input video codec ({e})"),
            })?;
        let width = decoder.width() & !1;
        let height = decoder.height() & !1;
        if width == 0 || height == 0 {
            return Err(IngestError::Unsupported {
                what: format!("video size {}x{}", decoder.width(), decoder.height()),
            });
        }
        let x264 = encoder::find_by_name("libx264").ok_or_else(|| IngestError::Unsupported {
            what: "this FFmpeg has no libx264 encoder".into(),
        })?;
        let mut enc = codec::Context::new_with_codec(x264)
            .encoder()
            .video()
            .map_err(|e| IngestError::Ffmpeg("creating the H.264 encoder", e))?;
        let fps = if frame_rate.numerator() > 0 && frame_rate.denominator() > 0 {
            frame_rate
        } else {
            Rational(30, 1)
        };
        let key_frames = (f64::from(fps) * segment_target.as_secs_f64())
            .round()
            .max(1.0) as u32;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(VIDEO_TIME_BASE);
        enc.set_frame_rate(Some(fps));
        // A ceiling only: keyframes are forced by time below; x264 may add scene cuts.
        enc.set_gop(key_frames.saturating_mul(2));
        // Closed GOPs: every keyframe (where a segment may start) must be decodable alone.
        enc.set_flags(codec::Flags::GLOBAL_HEADER | codec::Flags::CLOSED_GOP);
        let mut opts = Dictionary::new();
        opts.set("preset", "veryfast");
        opts.set("forced-idr", "1");
        if live {
            opts.set("tune", "zerolatency");
        }
        let encoder = enc
            .open_as_with(x264, opts)
            .map_err(|e| IngestError::Ffmpeg("opening libx264", e))?;
        let key_step = ((segment_target.as_secs_f64() * f64::from(VIDEO_TIME_BASE.denominator()))
            as i64)
            .max(1);
        Ok(VideoTranscoder {
            decoder,
            scaler: None,
            encoder,
            in_tb,
            width,
            height,
            next_key: 0,
            key_step,
            last_pts: None,
        })
    }

    /// The encoder, for the muxer's stream parameters.
    pub(super) fn encoder(&self) -> &encoder::Video {
        &self.encoder
    }

    /// Decodes `packet` and appends whatever the encoder has ready to `out`. A packet the
    /// decoder rejects is logged and skipped.
    pub(super) fn push(
        &mut self,
        packet: &Packet,
        out: &mut Vec<Packet>,
    ) -> Result<(), IngestError> {
        if let Err(e) = self.decoder.send_packet(packet) {
            warn!(cause = %e, "skipping a video packet the decoder rejected");
            return Ok(());
        }
        self.drain_decoder(out)
    }

    /// Drains the decoder and the encoder at the end of the input.
    pub(super) fn finish(&mut self, out: &mut Vec<Packet>) -> Result<(), IngestError> {
        if self.decoder.send_eof().is_ok() {
            self.drain_decoder(out)?;
        }
        self.encoder
            .send_eof()
            .map_err(|e| IngestError::Ffmpeg("flushing the H.264 encoder", e))?;
        self.drain_encoder(out)
    }

    fn drain_decoder(&mut self, out: &mut Vec<Packet>) -> Result<(), IngestError> {
        let mut decoded = frame::Video::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            let Some(ts) = decoded.timestamp().or(decoded.pts()) else {
                warn!("skipping a decoded video frame without a timestamp");
                continue;
            };
            let pts = ts.rescale(self.in_tb, VIDEO_TIME_BASE);
            if self.last_pts.is_some_and(|last| pts <= last) {
                continue; // duplicate or out-of-order frame: keep output timestamps increasing
            }
            self.last_pts = Some(pts);
            let mut picture = self.convert(&decoded)?;
            picture.set_pts(Some(pts));
            if pts >= self.next_key {
                picture.set_kind(ffmpeg::picture::Type::I);
                while self.next_key <= pts {
                    self.next_key += self.key_step;
                }
            } else {
                // Decoded frames keep the source's picture type; do not let it force keyframes.
                picture.set_kind(ffmpeg::picture::Type::None);
            }
            if let Err(e) = self.encoder.send_frame(&picture) {
                warn!(cause = %e, "skipping a video frame the encoder rejected");
                continue;
            }
            self.drain_encoder(out)?;
        }
        Ok(())
    }

    /// Converts a decoded picture to the encoder's size and pixel format when needed.
    fn convert(&mut self, decoded: &frame::Video) -> Result<frame::Video, IngestError> {
        if decoded.format() == Pixel::YUV420P
            && decoded.width() == self.width
            && decoded.height() == self.height
        {
            return Ok(decoded.clone());
        }
        let stale = self.scaler.as_ref().is_none_or(|s| {
            s.input().format != decoded.format()
                || s.input().width != decoded.width()
                || s.input().height != decoded.height()
        });
        if stale {
            self.scaler = Some(
                scaling::Context::get(
                    decoded.format(),
                    decoded.width(),
                    decoded.height(),
                    Pixel::YUV420P,
                    self.width,
                    self.height,
                    scaling::Flags::BILINEAR,
                )
                .map_err(|e| IngestError::Ffmpeg("creating the video scaler", e))?,
            );
        }
        let mut picture = frame::Video::empty();
        if let Some(scaler) = self.scaler.as_mut() {
            scaler
                .run(decoded, &mut picture)
                .map_err(|e| IngestError::Ffmpeg("scaling video", e))?;
        }
        Ok(picture)
    }

    fn drain_encoder(&mut self, out: &mut Vec<Packet>) -> Result<(), IngestError> {
        loop {
            let mut packet = Packet::empty();
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => out.push(packet),
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == EAGAIN => return Ok(()),
                Err(e) => return Err(IngestError::Ffmpeg("encoding H.264", e)),
            }
        }
    }
}

/// Decodes one audio stream and re-encodes it as AAC 48 kHz stereo.
pub(super) struct AudioTranscoder {
    decoder: ffmpeg::decoder::Audio,
    resampler: Option<resampling::Context>,
    encoder: encoder::Audio,
    in_tb: Rational,
    /// Resampled samples waiting for a full encoder frame, one Vec per channel (planar f32).
    fifo: [Vec<f32>; 2],
    /// Timestamp of the first sample in `fifo`, in AUDIO_TIME_BASE; None until the first frame.
    next_pts: Option<i64>,
    frame_size: usize,
}

impl AudioTranscoder {
    /// Opens a decoder for `params` and the native AAC encoder.
    pub(super) fn new(
        params: codec::Parameters,
        in_tb: Rational,
    ) -> Result<AudioTranscoder, IngestError> {
        let ctx = codec::Context::from_parameters(params)
            .map_err(|e| IngestError::Ffmpeg("reading audio codec parameters", e))?;
        let decoder = ctx
            .decoder()
            .audio()
            .map_err(|e| IngestError::Unsupported {
                what: format!("no decoder for the input audio codec ({e})"),
            })?;
        let aac = encoder::find(codec::Id::AAC).ok_or_else(|| IngestError::Unsupported {
            what: "this FFmpeg has no AAC encoder".into(),
        })?;
        let mut enc = codec::Context::new_with_codec(aac)
            .encoder()
            .audio()
            .map_err(|e| IngestError::Ffmpeg("creating the AAC encoder", e))?;
        enc.set_rate(AUDIO_RATE);
        enc.set_channel_layout(ChannelLayout::STEREO);
        enc.set_channels(2);
        enc.set_format(Sample::F32(ffmpeg::format::sample::Type::Planar));
        enc.set_bit_rate(AUDIO_BIT_RATE);
        enc.set_time_base(AUDIO_TIME_BASE);
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let encoder = enc
            .open_as(aac)
            .map_err(|e| IngestError::Ffmpeg("opening the AAC encoder", e))?;
        let frame_size = match encoder.frame_size() {
            0 => 1024,
            n => n as usize,
        };
        Ok(AudioTranscoder {
            decoder,
            resampler: None,
            encoder,
            in_tb,
            fifo: [Vec::new(), Vec::new()],
            next_pts: None,
            frame_size,
        })
    }

    /// The encoder, for the muxer's stream parameters.
    pub(super) fn encoder(&self) -> &encoder::Audio {
        &self.encoder
    }

    /// Decodes `packet` and appends whatever the encoder has ready to `out`. A packet the
    /// decoder rejects is logged and skipped.
    pub(super) fn push(
        &mut self,
        packet: &Packet,
        out: &mut Vec<Packet>,
    ) -> Result<(), IngestError> {
        if let Err(e) = self.decoder.send_packet(packet) {
            warn!(cause = %e, "skipping an audio packet the decoder rejected");
            return Ok(());
        }
        self.drain_decoder(out)
    }

    /// Drains decoder, resampler, FIFO (a short last frame) and encoder at the end of input.
    pub(super) fn finish(&mut self, out: &mut Vec<Packet>) -> Result<(), IngestError> {
        if self.decoder.send_eof().is_ok() {
            self.drain_decoder(out)?;
        }
        self.encode_fifo(true, out)?;
        self.encoder
            .send_eof()
            .map_err(|e| IngestError::Ffmpeg("flushing the AAC encoder", e))?;
        self.drain_encoder(out)
    }

    fn drain_decoder(&mut self, out: &mut Vec<Packet>) -> Result<(), IngestError> {
        let mut decoded = frame::Audio::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            if decoded.samples() == 0 {
                continue;
            }
            if decoded.channel_layout().is_empty() {
                decoded.set_channel_layout(ChannelLayout::default(i32::from(decoded.channels())));
            }
            if self.next_pts.is_none() {
                let ts = decoded.timestamp().or(decoded.pts()).unwrap_or(0);
                self.next_pts = Some(ts.rescale(self.in_tb, AUDIO_TIME_BASE).max(0));
            }
            self.resample(&decoded)?;
            self.encode_fifo(false, out)?;
        }
        Ok(())
    }

    fn resample(&mut self, decoded: &frame::Audio) -> Result<(), IngestError> {
        let stale = self.resampler.as_ref().is_none_or(|r| {
            r.input().format != decoded.format()
                || r.input().channel_layout != decoded.channel_layout()
                || r.input().rate != decoded.rate()
        });
        if stale {
            self.resampler = Some(
                resampling::Context::get(
                    decoded.format(),
                    decoded.channel_layout(),
                    decoded.rate(),
                    Sample::F32(ffmpeg::format::sample::Type::Planar),
                    ChannelLayout::STEREO,
                    AUDIO_RATE as u32,
                )
                .map_err(|e| IngestError::Ffmpeg("creating the audio resampler", e))?,
            );
        }
        let Some(resampler) = self.resampler.as_mut() else {
            return Ok(());
        };
        // Room for every converted sample plus the resampler's delay, so nothing piles up.
        let rate = u64::from(decoded.rate().max(1));
        let room = (decoded.samples() as u64 * AUDIO_RATE as u64 / rate) as usize + 256;
        let mut resampled = frame::Audio::new(
            Sample::F32(ffmpeg::format::sample::Type::Planar),
            room,
            ChannelLayout::STEREO,
        );
        if let Err(e) = resampler.run(decoded, &mut resampled) {
            warn!(cause = %e, "skipping audio the resampler rejected");
            return Ok(());
        }
        let n = resampled.samples();
        for (ch, fifo) in self.fifo.iter_mut().enumerate() {
            fifo.extend_from_slice(&resampled.plane::<f32>(ch)[..n]);
        }
        Ok(())
    }

    /// Encodes full frames from the FIFO; with `last`, also the remaining partial frame.
    fn encode_fifo(&mut self, last: bool, out: &mut Vec<Packet>) -> Result<(), IngestError> {
        while self.fifo[0].len() >= self.frame_size || (last && !self.fifo[0].is_empty()) {
            let n = self.fifo[0].len().min(self.frame_size);
            let mut chunk = frame::Audio::new(
                Sample::F32(ffmpeg::format::sample::Type::Planar),
                n,
                ChannelLayout::STEREO,
            );
            chunk.set_rate(AUDIO_RATE as u32);
            for (ch, fifo) in self.fifo.iter_mut().enumerate() {
                chunk.plane_mut::<f32>(ch)[..n].copy_from_slice(&fifo[..n]);
                fifo.drain(..n);
            }
            let pts = self.next_pts.unwrap_or(0);
            chunk.set_pts(Some(pts));
            self.next_pts = Some(pts + n as i64);
            if let Err(e) = self.encoder.send_frame(&chunk) {
                warn!(cause = %e, "skipping an audio frame the encoder rejected");
                continue;
            }
            self.drain_encoder(out)?;
        }
        Ok(())
    }

    fn drain_encoder(&mut self, out: &mut Vec<Packet>) -> Result<(), IngestError> {
        loop {
            let mut packet = Packet::empty();
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => out.push(packet),
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == EAGAIN => return Ok(()),
                Err(e) => return Err(IngestError::Ffmpeg("encoding AAC", e)),
            }
        }
    }
}
