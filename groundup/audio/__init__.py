"""Audio: file loading and the log-mel frontend that Whisper-style speech encoders expect."""

from groundup.lazy import lazy_exports

__all__ = lazy_exports(__name__, {
    ".io": "SAMPLE_RATE AudioError load_audio",
    ".mel": "CHUNK_LENGTH HOP_LENGTH N_FFT N_FRAMES N_SAMPLES log_mel_spectrogram mel_filters pad_or_trim",
})
