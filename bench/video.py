"""Benchmark: `render_reel` against ONE hand-written ffmpeg command doing the same work, in the same run.

    python bench/video.py [--seconds 15] [--rounds 2] [--upscale 4]

The reel: 1080x1920 at 30 fps from 3 stills (1024x1536, 1536x1024, 1024x1024, as the image engine makes them),
a synthetic voice (a 220 Hz sine with syllable-rate modulation and pauses, made by ffmpeg's aevalsrc), a caption
word every 0.35 s, crossfades, Ken Burns motion and two-pass loudness normalisation to -14 LUFS.

Fairness:
- The hand-written side is what a person would type: one `-filter_complex` string with the same filters
  (crop, 4x upscale, zoompan, xfade, ass with the same captions file, loudnorm with measured values) and the same
  encode settings, preceded by the loudnorm measuring pass it needs. Both sides measure; both pay for it.
- The pipeline's time is the whole `render_reel` call: input checks, writing the mix, measuring, the encode, and
  the verification afterwards (probe, an ebur128 pass over the output), which the hand-written side skips.
- The runs alternate for `--rounds` rounds and each keeps its best time: on a shared machine the neighbours'
  load is what a single round mostly measures. The CPU seconds of the ffmpeg processes are printed too, as a
  check that barely depends on the neighbours (the pipeline's own Python time is in the wall time only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `tests.images` and the package importable

from influencer_pipeline.video import ffmpeg, graph, render, subtitles  # noqa: E402
from influencer_pipeline.video.probe import probe  # noqa: E402
from influencer_pipeline.video.render import ReelSpec, check_reel, render_reel  # noqa: E402
from influencer_pipeline.video.subtitles import Word  # noqa: E402
from tests.images import make_photo  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "video"
GOAL = 1.15
WIDTH, HEIGHT, FPS, FADE = 1080, 1920, 30, 15  # FADE in frames (0.5 s)
STILL_SIZES = [(1024, 1536), (1536, 1024), (1024, 1024)]
SPEECH = "0.3*sin(2*PI*220*t)*(0.6+0.4*sin(2*PI*4*t))*lt(mod(t,2.9),2.4)"


def inputs(voice_s: float) -> tuple[list[Path], Path, list[Word]]:
    """Stills (cached), the voice and the caption words."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stills = []
    for seed, size in enumerate(STILL_SIZES):
        path = CACHE / f"still-{seed}-{size[0]}x{size[1]}.png"
        if not path.exists():
            make_photo(seed, size, grain=5.0).save(path)
        stills.append(path)
    voice = CACHE / f"voice-{voice_s:g}.wav"
    if not voice.exists():
        ffmpeg.run(["-f", "lavfi", "-i", f"aevalsrc='{SPEECH}':s=22050:d={voice_s}", str(voice)], what="voice")
    words = [Word(f"word{i}", i * 0.35, i * 0.35 + 0.3) for i in range(int(voice_s / 0.35))]
    return stills, voice, words


def hand_written(stills: list[Path], voice: Path, captions: Path, voice_s: float, upscale: int, out: Path) -> None:
    """The measuring pass and the one encode, as a person would write them for this reel."""
    fonts = subtitles.default_font_file().parent
    total = math.ceil((voice_s + 0.5) * FPS)
    frames = (total + 2 * FADE) // 3  # 3 equal stills; 15 s divides evenly
    seconds = total / FPS
    prep = "aresample=48000,aformat=sample_fmts=flt:channel_layouts=stereo"
    prep += f",apad=whole_dur={seconds},atrim=end={seconds}"
    measure = f"{prep},loudnorm=I=-14:TP=-1.5:LRA=11:print_format=json"
    stderr = ffmpeg.run(["-nostats", "-i", str(voice), "-af", measure, "-f", "null", "-"], what="measuring")
    m = json.loads(stderr[stderr.rindex("{") : stderr.rindex("}") + 1])
    lra = m["input_lra"] if float(m["input_lra"]) > 0 else "0.01"
    loudnorm = (
        f"loudnorm=I=-14:TP=-1.5:LRA=11:measured_I={m['input_i']}:measured_TP={m['input_tp']}:measured_LRA={lra}"
        f":measured_thresh={m['input_thresh']}:offset={m['target_offset']}:linear=true:print_format=json"
    )
    last = frames - 1
    motions = [
        (f"1+0.15*on/{last}", "iw/2-(iw/zoom/2)"),
        ("1.15", f"(iw-iw/zoom)*on/{last}"),
        (f"1.15-0.15*on/{last}", "iw/2-(iw/zoom/2)"),
    ]
    graph = []
    for index, ((w, h), (z, x)) in enumerate(zip(STILL_SIZES, motions, strict=True)):
        crop_w = round(h * WIDTH / HEIGHT) if w * HEIGHT > h * WIDTH else w
        crop_h = h if w * HEIGHT > h * WIDTH else round(w * HEIGHT / WIDTH)
        graph.append(
            f"[{index}:v]crop={crop_w}:{crop_h}:{(w - crop_w) // 2}:{(h - crop_h) // 2},"
            f"scale={upscale * WIDTH}:{upscale * HEIGHT}:out_color_matrix=bt709:out_range=tv,format=yuv420p,"
            f"zoompan=z='{z}':x='{x}':y='ih/2-(ih/zoom/2)':d={frames}:s={WIDTH}x{HEIGHT}:fps={FPS},setsar=1[k{index}]"
        )
    graph.append(f"[k0][k1]xfade=transition=fade:duration=0.5:offset={(frames - FADE) / FPS:.6f}[x1]")
    graph.append(f"[x1][k2]xfade=transition=fade:duration=0.5:offset={(2 * frames - 2 * FADE) / FPS:.6f}[x2]")
    graph.append(f"[x2]ass=filename={captions}:fontsdir={fonts}[v]")
    graph.append(f"[3:a]{prep},{loudnorm},aresample=48000[a]")
    sources = [*(arg for still in stills for arg in ("-i", str(still))), "-i", str(voice)]
    video = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-maxrate", "10M", "-bufsize", "20M"]
    video += ["-profile:v", "high", "-pix_fmt", "yuv420p", "-r", str(FPS), "-g", str(2 * FPS)]
    video += ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]
    audio = ["-c:a", "aac", "-b:a", "192k", "-ar", "48000", "-ac", "2"]
    graph_args = ["-filter_complex", ";".join(graph), "-map", "[v]", "-map", "[a]"]
    ffmpeg.run(
        [*sources, *graph_args, *video, *audio, "-movflags", "+faststart", str(out)], what="the hand-written encode"
    )


def timed(work: Callable[[], object]) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds of the ffmpeg children (less sensitive to busy neighbours), and the result."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = work()
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return wall, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="reel length (the voice is 0.5 s shorter)")
    parser.add_argument("--rounds", type=int, default=2, help="alternate both runs; keep each one's best")
    parser.add_argument("--upscale", type=int, default=graph.UPSCALE, help="zoompan pre-scale (both sides)")
    args = parser.parse_args()
    graph.UPSCALE = args.upscale
    voice_s = args.seconds - render.TAIL_S
    stills, voice, words = inputs(voice_s)
    spec = ReelSpec(stills=stills, voice=voice, words=words, width=WIDTH, height=HEIGHT, fps=FPS)
    load = os.getloadavg()[0]
    ours, theirs, ours_cpu, theirs_cpu = math.inf, math.inf, math.inf, math.inf
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        folder = Path(scratch)
        captions = folder / "captions.ass"
        subtitles.write_ass(words, WIDTH, HEIGHT, captions)  # the same captions file for the hand-written side
        for _ in range(args.rounds):
            wall, cpu, report = timed(lambda: render_reel(spec, folder / "pipeline.mp4", folder / "work"))
            ours, ours_cpu = min(ours, wall), min(ours_cpu, cpu)
            wall, cpu, _ = timed(
                lambda: hand_written(stills, voice, captions, voice_s, args.upscale, folder / "hand.mp4")
            )
            theirs, theirs_cpu = min(theirs, wall), min(theirs_cpu, cpu)
        hand = probe(folder / "hand.mp4")
        problems = check_reel(report, spec)
    cores = len(os.sched_getaffinity(0))
    print(
        f"video: {report.duration_s:.2f} s reel at {report.width}x{report.height}, {len(stills)} stills, "
        f"upscale {args.upscale}x, {report.loudnorm_mode} loudnorm to {report.integrated_lufs:.1f} LUFS / "
        f"{report.true_peak_db:.1f} dBTP, {report.size_bytes / 1e6:.1f} MB; hand-written output "
        f"{hand.duration_s:.2f} s; checks: {'; '.join(problems) or 'all pass'}; {cores} cores, load average "
        f"{load:.1f} before the runs; best of {args.rounds}"
    )
    print(
        f"video: pipeline {ours:.1f} s, hand-written ffmpeg {theirs:.1f} s, ratio {ours / theirs:.2f} "
        f"(goal <= {GOAL:g}); real-time factor {ours / report.duration_s:.2f} (render s / video s)"
    )
    print(
        f"video: ffmpeg CPU time (all cores) pipeline {ours_cpu:.1f} s, hand-written {theirs_cpu:.1f} s, "
        f"ratio {ours_cpu / theirs_cpu:.2f}"
    )


if __name__ == "__main__":
    main()
