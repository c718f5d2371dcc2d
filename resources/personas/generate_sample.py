"""Draw the sample persona `ava`: synthetic portraits we own, so the repository can ship them (CC0).

Each image is a stylised woman with the same face, hair and eye colour (what a LoRA should learn) in a
different scene, outfit, framing and light (what captions should describe). Two extra files are rejects on
purpose, so the demo shows the rejection report: a tiny image and a near-duplicate of the first portrait.

    python resources/personas/generate_sample.py   # rewrites resources/personas/ava/
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).parent / "ava"
SKIN, HAIR, EYES = (232, 190, 160), (92, 52, 30), (46, 110, 80)
SCENES = [
    ("beach", (120, 190, 235), (230, 210, 160)),
    ("city street", (150, 160, 175), (90, 90, 100)),
    ("cafe", (200, 160, 120), (120, 80, 60)),
    ("park", (140, 200, 240), (80, 150, 70)),
    ("studio", (235, 235, 240), (200, 200, 205)),
    ("sunset rooftop", (250, 150, 90), (70, 60, 80)),
    ("library", (150, 110, 80), (100, 70, 50)),
    ("snowy mountain", (200, 220, 240), (245, 245, 250)),
]
OUTFITS = [(200, 40, 60), (30, 60, 140), (240, 240, 235), (40, 40, 45), (230, 180, 40), (90, 140, 90)]


def portrait(index: int, size: tuple[int, int] = (768, 1024)) -> tuple[Image.Image, str]:
    rng = random.Random(index)
    scene, sky, ground = SCENES[index % len(SCENES)]
    outfit = OUTFITS[index % len(OUTFITS)]
    w, h = size
    img = Image.new("RGB", size, sky)
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.7))
    draw.rectangle([0, horizon, w, h], fill=ground)
    for _ in range(40):  # scenery: windows, trees, waves, books
        x, y = rng.randrange(w), rng.randrange(h)
        s = rng.randrange(10, 80)
        tone = tuple(max(0, min(255, c + rng.randrange(-60, 60))) for c in (sky if y < horizon else ground))
        draw.rectangle([x, y, x + s, y + s // 2], fill=tone)
    scale = 0.7 + 0.6 * ((index * 7) % 16) / 15  # close-ups to wide shots
    cx = w // 2 + (-1) ** index * (40 + (index * 37) % 160)
    cy = int(h * (0.28 + 0.12 * ((index * 5) % 8) / 7))
    head = int(120 * scale)
    draw.rounded_rectangle([cx - 2 * head, cy + head, cx + 2 * head, h], radius=head, fill=outfit)
    draw.rectangle([cx - head // 3, cy + head // 2, cx + head // 3, cy + int(head * 1.3)], fill=SKIN)
    draw.ellipse([cx - int(head * 1.2), cy - int(head * 1.25), cx + int(head * 1.2), cy + int(head * 0.9)], fill=HAIR)
    draw.ellipse([cx - head, cy - head, cx + head, cy + int(head * 1.15)], fill=SKIN)
    draw.chord([cx - head, cy - int(head * 1.2), cx + head, cy - head // 4], 180, 360, fill=HAIR)
    for side in (-1, 1):
        ex = cx + side * head // 2.5
        draw.ellipse([ex - 16, cy - 8, ex + 16, cy + 16], fill=(255, 255, 255))
        draw.ellipse([ex - 9, cy - 4, ex + 9, cy + 13], fill=EYES)
        draw.line([ex - 22, cy - 26, ex + 18, cy - 30], fill=HAIR, width=6)
    mouth = [cx - head // 3, cy + head // 3, cx + head // 3, cy + int(head * 0.75)]
    draw.arc(mouth, 20, 160, fill=(170, 60, 70), width=6)
    img = img.filter(ImageFilter.SMOOTH)  # soften aliasing only: the curation blur check must still pass
    noise = Image.effect_noise(size, 40).convert("RGB")
    img = Image.blend(img, noise, 0.12)  # film-grain texture, like a real photo's
    if index % 3 == 1:
        img = img.point(lambda v: int(v * 0.85))  # dimmer light
    if index % 4 == 3:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    caption = f"ohwx woman, {scene}, wearing a {['red', 'blue', 'white', 'black', 'yellow', 'green'][index % 6]} top"
    return img, caption


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("ava_*"):
        old.unlink()
    for i in range(16):
        img, caption = portrait(i)
        img.save(OUT / f"ava_{i + 1:02d}.jpg", quality=88)
        if i < 12:  # four images are left for the captioner (or the marked fallback caption)
            (OUT / f"ava_{i + 1:02d}.txt").write_text(caption + "\n")
    first, _ = portrait(0)
    first.resize((740, 987)).save(OUT / "ava_dup_of_01.jpg", quality=80)
    small, _ = portrait(3, size=(384, 512))
    small.save(OUT / "ava_tiny.jpg", quality=88)


if __name__ == "__main__":
    main()
