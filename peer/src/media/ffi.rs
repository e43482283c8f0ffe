//! The few places where `peer::media` talks to FFmpeg's C API directly, because ffmpeg-next has
//! no safe wrapper for them: an output context that writes into memory (custom AVIOContext), a
//! fragment flush (`av_write_frame(ctx, NULL)`), opening an input with a forced demuxer, and an
//! interrupt callback that lets a stop flag abort a blocking read.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CString};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::ffi;
use ffmpeg_next::format::context;
use ffmpeg_next::{Dictionary, Error};

/// Size of the AVIO staging buffer; FFmpeg hands us at most this many bytes per callback.
const AVIO_BUFFER_SIZE: usize = 64 * 1024;

/// An FFmpeg output context whose bytes land in a `Vec<u8>` instead of a file.
///
/// Drop order matters: the AVIOContext is ours (`AVFMT_FLAG_CUSTOM_IO`), so we detach it from
/// the format context before ffmpeg-next's destructor (which would `avio_close` it) runs, then
/// free it ourselves.
pub(super) struct MemOutput {
    ctx: ManuallyDrop<context::Output>,
    avio: *mut ffi::AVIOContext,
    // Boxed so that the Vec header's address, given to FFmpeg as the callback's opaque
    // pointer, stays put when MemOutput moves.
    #[allow(clippy::box_collection)]
    buf: Box<Vec<u8>>,
}

// SAFETY: the raw AVIOContext is only touched through `&mut self` and belongs to this value
// alone, like the format context that ffmpeg-next already marks `Send`.
unsafe impl Send for MemOutput {}

impl MemOutput {
    /// Allocates an output context for the muxer `format` (e.g. "mp4") writing into memory.
    pub(super) fn new(format: &str) -> Result<MemOutput, Error> {
        let fmt = CString::new(format).map_err(|_| Error::MuxerNotFound)?;
        let mut buf: Box<Vec<u8>> = Box::default();
        // SAFETY: every pointer passed to FFmpeg is either freshly allocated by FFmpeg or points
        // into `buf`, which outlives the contexts (freed in Drop before `buf`). Failure paths
        // free what was allocated so far.
        unsafe {
            let mut ps: *mut ffi::AVFormatContext = ptr::null_mut();
            let r = ffi::avformat_alloc_output_context2(
                &mut ps,
                ptr::null_mut(),
                fmt.as_ptr(),
                ptr::null(),
            );
            if r < 0 || ps.is_null() {
                return Err(Error::from(r.min(-1)));
            }
            let ctx = context::Output::wrap(ps);
            let buffer = ffi::av_malloc(AVIO_BUFFER_SIZE) as *mut u8;
            if buffer.is_null() {
                return Err(Error::Other {
                    errno: libc_enomem(),
                });
            }
            let opaque = &mut *buf as *mut Vec<u8> as *mut c_void;
            let avio = ffi::avio_alloc_context(
                buffer,
                AVIO_BUFFER_SIZE as c_int,
                1,
                opaque,
                None,
                Some(write_to_vec),
                None,
            );
            if avio.is_null() {
                ffi::av_free(buffer as *mut c_void);
                return Err(Error::Other {
                    errno: libc_enomem(),
                });
            }
            (*ps).pb = avio;
            (*ps).flags |= ffi::AVFMT_FLAG_CUSTOM_IO as c_int;
            Ok(MemOutput {
                ctx: ManuallyDrop::new(ctx),
                avio,
                buf,
            })
        }
    }

    /// The wrapped format context.
    pub(super) fn ctx(&mut self) -> &mut context::Output {
        &mut self.ctx
    }

    /// The wrapped format context, read-only.
    pub(super) fn ctx_ref(&self) -> &context::Output {
        &self.ctx
    }

    /// Asks the muxer to close the current fragment (`av_write_frame(ctx, NULL)`; with
    /// `movflags=frag_custom` this writes a moof+mdat for everything queued so far).
    pub(super) fn flush_fragment(&mut self) -> Result<(), Error> {
        let ctx = self.ctx();
        // SAFETY: the context is valid and its header has been written (callers only flush
        // after `write_header`); a NULL packet is the documented flush request.
        let r = unsafe { ffi::av_write_frame(ctx.as_mut_ptr(), ptr::null_mut()) };
        if r < 0 {
            return Err(Error::from(r));
        }
        Ok(())
    }

    /// Takes every byte written so far (after flushing the AVIO staging buffer).
    pub(super) fn take(&mut self) -> Vec<u8> {
        // SAFETY: `avio` is the live AVIOContext created in `new`; flushing it calls our write
        // callback, which appends to `buf`.
        unsafe { ffi::avio_flush(self.avio) };
        std::mem::take(&mut *self.buf)
    }
}

impl Drop for MemOutput {
    fn drop(&mut self) {
        // SAFETY: `ctx` is taken exactly once, here, and never used afterwards. We detach our
        // AVIOContext first so that ffmpeg-next's destructor sees a NULL `pb` (avio_close(NULL)
        // is a no-op) and frees only the format context.
        unsafe {
            let mut ctx = ManuallyDrop::take(&mut self.ctx);
            (*ctx.as_mut_ptr()).pb = ptr::null_mut();
            drop(ctx);
        }
        // SAFETY: `avio` was allocated by avio_alloc_context and is no longer referenced by any
        // format context; its buffer may have been reallocated by FFmpeg, so free the current
        // one, then the context itself.
        unsafe {
            if !self.avio.is_null() {
                ffi::av_freep(&mut (*self.avio).buffer as *mut *mut u8 as *mut c_void);
                ffi::avio_context_free(&mut self.avio);
            }
        }
    }
}

/// AVIO write callback: appends FFmpeg's bytes to the `Vec<u8>` behind `opaque`.
unsafe extern "C" fn write_to_vec(opaque: *mut c_void, buf: *mut u8, size: c_int) -> c_int {
    if opaque.is_null() || buf.is_null() || size <= 0 {
        return 0;
    }
    // SAFETY: `opaque` is the boxed Vec registered in MemOutput::new, alive while the AVIO
    // context is; FFmpeg guarantees `buf` holds `size` readable bytes.
    let (vec, data) = unsafe {
        (
            &mut *(opaque as *mut Vec<u8>),
            std::slice::from_raw_parts(buf, size as usize),
        )
    };
    vec.extend_from_slice(data);
    size
}

fn libc_enomem() -> i32 {
    12 // ENOMEM on Linux and the BSDs
}

/// Opens `url` as an input, optionally forcing the demuxer `format` (e.g. "lavfi"), with
/// `options` for the demuxer/protocol, and probes its streams.
pub(super) fn open_input(
    url: &str,
    format: Option<&str>,
    options: Dictionary,
) -> Result<context::Input, Error> {
    let c_url = CString::new(url).map_err(|_| Error::InvalidData)?;
    let c_fmt = match format {
        Some(f) => Some(CString::new(f).map_err(|_| Error::DemuxerNotFound)?),
        None => None,
    };
    // SAFETY: all strings are NUL-terminated and outlive the calls; `ps` is only wrapped after
    // a successful open, and closed on the probe failure path.
    unsafe {
        let fmt = match &c_fmt {
            Some(f) => {
                let fmt = ffi::av_find_input_format(f.as_ptr());
                if fmt.is_null() {
                    return Err(Error::DemuxerNotFound);
                }
                fmt
            }
            None => ptr::null(),
        };
        let mut ps: *mut ffi::AVFormatContext = ptr::null_mut();
        let mut opts = options.disown();
        let r = ffi::avformat_open_input(&mut ps, c_url.as_ptr(), fmt as _, &mut opts);
        Dictionary::own(opts);
        if r < 0 {
            return Err(Error::from(r));
        }
        let r = ffi::avformat_find_stream_info(ps, ptr::null_mut());
        if r < 0 {
            ffi::avformat_close_input(&mut ps);
            return Err(Error::from(r));
        }
        Ok(context::Input::wrap(ps))
    }
}

/// Clears a stream's codec tag so the mp4 muxer picks its own (e.g. FLV's numeric tags are not
/// valid in mp4).
pub(super) fn clear_codec_tag(stream: &mut ffmpeg::format::stream::StreamMut) {
    // SAFETY: the stream belongs to a live output context and its codecpar is always allocated.
    unsafe {
        let par = (*stream.as_mut_ptr()).codecpar;
        if !par.is_null() {
            (*par).codec_tag = 0;
        }
    }
}

/// An input whose blocking reads are aborted when `stop` becomes true (FFmpeg's
/// interrupt callback). The callback is removed before the input is closed.
pub(super) struct Interruptible<'a> {
    input: context::Input,
    _stop: PhantomData<&'a AtomicBool>,
}

impl<'a> Interruptible<'a> {
    /// Installs `stop` as the interrupt flag of `input` for the lifetime of the returned value.
    pub(super) fn new(mut input: context::Input, stop: &'a AtomicBool) -> Interruptible<'a> {
        // SAFETY: `stop` outlives this value (lifetime 'a), and Drop uninstalls the callback
        // before the input (and its possible final callback calls) can outlive `stop`.
        unsafe {
            let ctx = input.as_mut_ptr();
            (*ctx).interrupt_callback.callback = Some(check_stop);
            (*ctx).interrupt_callback.opaque = stop as *const AtomicBool as *mut c_void;
        }
        Interruptible {
            input,
            _stop: PhantomData,
        }
    }
}

impl Deref for Interruptible<'_> {
    type Target = context::Input;
    fn deref(&self) -> &context::Input {
        &self.input
    }
}

impl DerefMut for Interruptible<'_> {
    fn deref_mut(&mut self) -> &mut context::Input {
        &mut self.input
    }
}

impl Drop for Interruptible<'_> {
    fn drop(&mut self) {
        // SAFETY: the context is alive (the input is dropped after this); clearing the callback
        // means FFmpeg no longer dereferences the borrowed flag.
        unsafe {
            let ctx = self.input.as_mut_ptr();
            (*ctx).interrupt_callback.callback = None;
            (*ctx).interrupt_callback.opaque = ptr::null_mut();
        }
    }
}

unsafe extern "C" fn check_stop(opaque: *mut c_void) -> c_int {
    if opaque.is_null() {
        return 0;
    }
    // SAFETY: `opaque` is the `&AtomicBool` installed by Interruptible::new, valid while the
    // callback is installed.
    let stop = unsafe { &*(opaque as *const AtomicBool) };
    c_int::from(stop.load(Ordering::Relaxed))
}

/// Picture size of a video stream as stored in its codec parameters (0×0 when unknown).
pub(super) fn video_size(stream: &ffmpeg::format::stream::Stream) -> (u32, u32) {
    // SAFETY: the stream belongs to a live input context; codecpar is always allocated for a
    // demuxed stream, and we only read two integers.
    unsafe {
        let par = (*stream.as_ptr()).codecpar;
        if par.is_null() {
            return (0, 0);
        }
        (
            u32::try_from((*par).width).unwrap_or(0),
            u32::try_from((*par).height).unwrap_or(0),
        )
    }
}
