"""The reel's sound: voice and music mixed (music ducked under the voice), measured, limited, and loudness-normalised.

Steps 1 and 2 of `render` (see its docstring): audio-only ffmpeg runs that take a fraction of the encode's time.
ffmpeg's `loudnorm` (https://ffmpeg.org/ffmpeg-filters.html#loudnorm) runs linear only when the measured true peak
plus the gain stays under the target and the loudness range under LRA, which is why a peak limiter
(https://ffmpeg.org/ffmpeg-filters.html#alimiter) may run first; `sidechaincompress`
(https://ffmpeg.org/ffmpeg-filters.html#sidechaincompress) ducks the music.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import ffmpeg as ffmpeg_python

import influencer_pipeline.video.ffmpeg as ffmpeg
import influencer_pipeline.video.probe as probe
from influencer_pipeline.video.spec import SAMPLE_RATE, ReelSpec

LRA = 11.0
VOICE_LEVEL_LUFS = -20.0  # voice and music are levelled relative to each other before mixing...
MUSIC_BED_LU = 10.0  # ...the music bed sits this far under the voice, then ducks further while the voice speaks
MUSIC_FADE_S = 1.5
# AAC smears sharp transients: its decoded true peak can sit up to ~0.6 dB above the PCM it was given, so
# loudnorm and the limiter aim this far under the spec's true-peak ceiling (which the final check re-measures).
AAC_HEADROOM_DB = 0.5
LIMITER_MARGIN_DB = 0.5  # the limiter is sample-peak; true peaks can exceed it by a fraction of a dB
LIMITER_ROUNDS = 3
# Synthetic speech peaks high (espeak-ng: -1.3 dBTP at -20.7 LUFS), so -14 LUFS at -1.5 dBTP needs about 7 dB of
# peak reduction whoever does it (loudnorm's dynamic mode limits too); beyond 10 dB, dynamic mode is left to it.
MAX_LIMITING_DB = 10.0
AUDIO_FILE = "mix.wav"
_LOUDNORM_JSON = re.compile(r"\{[^{}]*\"normalization_type\"[^{}]*\}")


@dataclass(frozen=True)
class Loudnorm:
    """loudnorm pass-1 measurements, as the strings of ffmpeg's JSON (pass 2 takes them verbatim)."""

    measured: dict[str, str]

    @property
    def silent(self) -> bool:
        value = self.measured.get("input_i", "-inf")
        return not _is_number(value) or float(value) <= probe.SILENCE_LUFS

    @property
    def integrated(self) -> float:
        return float(self.measured["input_i"])

    def linear_excess_db(self, spec: ReelSpec) -> float:
        """How far the peaks are from allowing linear mode: ffmpeg uses it only if
        measured_TP + (I - measured_I) <= TP (and measured_LRA <= LRA); positive means dynamic mode."""
        return float(self.measured["input_tp"]) + spec.target_lufs - self.integrated - _loudnorm_tp(spec)


def prepare_audio(spec: ReelSpec, duration_s: float, work_dir: Path) -> tuple[Path, Loudnorm]:
    """Write the mix (exactly `duration_s` long) and measure it (loudnorm pass 1).

    When only its peaks keep pass 2 from linear mode, the mix is made again with the loudness gain applied and a
    peak limiter just under the true-peak target, then re-measured: pass 2 is then a small linear gain instead of
    loudnorm's riding AGC. Limiting lowers the loudness a little and true peaks overshoot a sample-peak limiter a
    little, so gain and ceiling are corrected from each measurement; this settles in one or two rounds."""
    mix = work_dir / AUDIO_FILE
    levels = _levels(spec, duration_s)
    _write_mix(spec, duration_s, mix, levels)
    loudnorm = measure_loudnorm(mix, spec)
    if not _limiting_helps(loudnorm, spec):
        return mix, loudnorm
    gain, ceiling = 0.0, _loudnorm_tp(spec) - LIMITER_MARGIN_DB
    for _ in range(LIMITER_ROUNDS):
        gain += spec.target_lufs - loudnorm.integrated
        _write_mix(spec, duration_s, mix, levels, limiter=(gain, ceiling))
        loudnorm = measure_loudnorm(mix, spec)
        if loudnorm.linear_excess_db(spec) <= 0:
            break
        ceiling -= loudnorm.linear_excess_db(spec) + 0.1
    return mix, loudnorm


def _limiting_helps(loudnorm: Loudnorm, spec: ReelSpec) -> bool:
    """Linear mode is blocked by the peaks alone (a limiter cannot narrow a loudness range), by no more than
    MAX_LIMITING_DB of peak reduction."""
    if loudnorm.silent or loudnorm.linear_excess_db(spec) <= 0 or float(loudnorm.measured["input_lra"]) > LRA:
        return False
    return loudnorm.linear_excess_db(spec) + LIMITER_MARGIN_DB <= MAX_LIMITING_DB


def _levels(spec: ReelSpec, duration_s: float) -> tuple[float, float]:
    """Gains (dB) for voice and music. With both, each is measured so the bed sits MUSIC_BED_LU under the voice
    whatever levels the files come at (TTS engines and songs differ by 20 dB); alone, loudnorm sets the level."""
    if spec.voice is None or spec.music is None:
        return 0.0, 0.0
    voice = probe.loudness(Path(spec.voice))
    music = probe.loudness(Path(spec.music), limit_s=duration_s)
    voice_gain = 0.0 if probe.is_silent(voice) else VOICE_LEVEL_LUFS - voice.integrated_lufs
    music_gain = 0.0 if probe.is_silent(music) else VOICE_LEVEL_LUFS - MUSIC_BED_LU - music.integrated_lufs
    return voice_gain, music_gain


def _write_mix(
    spec: ReelSpec,
    duration_s: float,
    path: Path,
    levels: tuple[float, float],
    limiter: tuple[float, float] | None = None,
) -> None:
    """Voice and/or music (or silence) as 48 kHz stereo float WAV; `limiter` = (gain dB, sample-peak ceiling dB)."""
    seconds = f"{duration_s:.6f}"
    voice = _voice_stream(spec.voice, levels[0], seconds) if spec.voice is not None else None
    music = _music_stream(spec.music, levels[1], duration_s) if spec.music is not None else None
    if voice is not None and music is not None:
        mix = _duck(voice, music)
    elif voice is not None or music is not None:
        mix = voice if voice is not None else music
    else:
        mix = ffmpeg_python.input(f"anullsrc=r={SAMPLE_RATE}:cl=stereo", f="lavfi").audio
    if limiter is not None:
        gain_db, ceiling_db = limiter
        mix = mix.filter("volume", f"{gain_db:.2f}dB").filter(
            "alimiter", limit=f"{10 ** (ceiling_db / 20):.6f}", level=0, latency=1, attack=5, release=80
        )
    mix = mix.filter("apad", whole_dur=seconds).filter("atrim", end=seconds)  # exact length, whatever came before
    args = ffmpeg_python.output(mix, str(path), acodec="pcm_f32le", ar=SAMPLE_RATE, ac=2, f="wav").get_args()
    ffmpeg.run(args, what="mixing the voice and music")


def _voice_stream(voice: Path, gain_db: float, seconds: str):
    """The voice padded with silence to the reel's length (amix ends with its first input)."""
    stream = _conform(ffmpeg_python.input(str(voice)).audio, gain_db)
    return stream.filter("apad", whole_dur=seconds).filter("atrim", end=seconds)


def _music_stream(music: Path, gain_db: float, duration_s: float):
    """The music looped (`-stream_loop -1`), cut to the reel's length and faded out at the end."""
    fade_start = f"{max(duration_s - MUSIC_FADE_S, 0.0):.6f}"
    stream = _conform(ffmpeg_python.input(str(music), stream_loop=-1).audio, gain_db)
    return stream.filter("atrim", end=f"{duration_s:.6f}").filter("afade", t="out", st=fade_start, d=MUSIC_FADE_S)


def _duck(voice, music):
    """Music ducked under the voice: the voice is split to be both the signal and the compressor's sidechain, and
    amix keeps both at full level (its default `normalize` would halve the voice)."""
    split = voice.filter_multi_output("asplit")
    ducked = ffmpeg_python.filter(
        [music, split[1]], "sidechaincompress", threshold=0.03, ratio=10, attack=20, release=400
    )
    return ffmpeg_python.filter(
        [split[0], ducked], "amix", inputs=2, duration="first", dropout_transition=0, normalize=0
    )


def _conform(stream, gain_db: float):
    """48 kHz float stereo, so voice, music and silence mix and compare sample for sample."""
    stream = stream.filter("aresample", SAMPLE_RATE).filter("aformat", sample_fmts="flt", channel_layouts="stereo")
    return stream.filter("volume", f"{gain_db:.2f}dB") if gain_db else stream


def measure_loudnorm(path: Path, spec: ReelSpec) -> Loudnorm:
    """loudnorm pass 1 (audio only, a fraction of a second): the values pass 2 needs."""
    stderr = ffmpeg.run(
        ["-nostats", "-i", str(path), "-af", _pass1_filter(spec), "-f", "null", "-"],
        what=f"measuring the loudness of {path.name}",
    )
    return Loudnorm(measured=_loudnorm_json(stderr))


def _pass1_filter(spec: ReelSpec) -> str:
    return f"loudnorm=I={spec.target_lufs}:TP={_loudnorm_tp(spec)}:LRA={LRA}:print_format=json"


def _loudnorm_tp(spec: ReelSpec) -> float:
    return spec.true_peak_db - AAC_HEADROOM_DB


def _loudnorm_json(stderr: str) -> dict[str, str]:
    matches = _LOUDNORM_JSON.findall(stderr)
    if not matches:
        raise ffmpeg.FFmpegError("reading loudnorm's measurements", 0, stderr, [])
    return json.loads(matches[-1])


def normalization_type(stderr: str) -> str:
    return _loudnorm_json(stderr)["normalization_type"]


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def pass2_options(spec: ReelSpec, loudnorm: Loudnorm) -> dict[str, str | float]:
    """Pass 2 applies pass 1's measurements. ffmpeg reads measured_LRA == 0 as "not measured" and then never
    uses linear mode, yet 0.00 is a real measurement (steady audio, or anything under 3 s); 0.01 says the same."""
    m = loudnorm.measured
    return {
        "I": spec.target_lufs,
        "TP": _loudnorm_tp(spec),
        "LRA": LRA,
        "measured_I": m["input_i"],
        "measured_TP": m["input_tp"],
        "measured_LRA": m["input_lra"] if float(m["input_lra"]) > 0 else "0.01",
        "measured_thresh": m["input_thresh"],
        "offset": m["target_offset"],
        "linear": "true",
        "print_format": "json",
    }
