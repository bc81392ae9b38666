"""Decoding, cropping and resizing one JPEG on the CPU (`qresnet.jpeg_decode`, through `imagenet_input`):
the paper's crops, OpenCV against Pillow, reduced-scale (draft) and crop-window decoding."""

import io

import numpy as np
import pytest
from PIL import Image

from qresnet import imagenet_input, jpeg_decode


def test_inception_crop_boxes_follow_the_paper():
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(8, 300, 2))
        top, left, ch, cw = imagenet_input.inception_crop_box(rng, h, w, 224)
        assert top >= 0 and top + ch <= h and left >= 0 and left + cw <= w
        if (ch, cw) != imagenet_input.center_crop_box(h, w, 224)[2:]:
            # area 0.08..1 and aspect 3/4..4/3, up to rounding to whole pixels
            assert 0.08 * h * w - (ch + cw) <= ch * cw <= h * w
            assert 3 / 4 - 1.5 / ch <= cw / ch <= 4 / 3 + 1.5 / ch


def test_center_crop_is_224_of_256_of_the_shorter_side():
    assert imagenet_input.center_crop_box(256, 320, 224) == (16, 48, 224, 224)
    assert imagenet_input.center_crop_box(500, 375, 224) == (86, 24, 328, 328)  # 328 = int(375 * 224 / 256)


def test_a_crop_the_image_cannot_hold_falls_back_to_the_center_crop():
    rng = np.random.default_rng(0)
    # With area >= 1 and an aspect far from the image's, no draw fits.
    box = imagenet_input.inception_crop_box(rng, 10, 200, 224, area=(1.0, 1.0), ratio=(1.0, 1.0))
    assert box == imagenet_input.center_crop_box(10, 200, 224)


def test_draft_reduction_keeps_the_crop_at_least_the_output_size():
    assert imagenet_input.draft_reduction(224, 300, 224) == 1
    assert imagenet_input.draft_reduction(447, 900, 224) == 1
    assert imagenet_input.draft_reduction(448, 900, 224) == 2
    assert imagenet_input.draft_reduction(900, 1000, 224) == 4
    assert imagenet_input.draft_reduction(1792, 2000, 224) == 8


def _decoded(data, backend):
    """The JPEG decoded at full size, RGB, by the backend's library."""
    if backend == "pillow":
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    import cv2

    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)[..., ::-1]


@pytest.mark.parametrize("backend", imagenet_input.CPU_BACKENDS)
def test_jpeg_bytes_at_full_size_give_the_decoded_arrays_crops(backend, photo_jpeg):
    data = photo_jpeg(300, 400)
    decoded = {"image": _decoded(data, backend), "label": 7}
    raw = {"image": data, "label": 7}
    for seed in range(5):
        a = imagenet_input.train_example(decoded, np.random.default_rng(seed), 64, backend=backend)
        b = imagenet_input.train_example(raw, np.random.default_rng(seed), 64, draft=False, backend=backend)
        np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(
        imagenet_input.eval_example(decoded, 64, backend)["image"],
        imagenet_input.eval_example(raw, 64, backend)["image"],
    )


def test_opencv_and_pillow_give_the_same_crop_in_rgb(photo_jpeg):
    """The two backends differ only in the bicubic kernel (and Pillow antialiases when it shrinks):
    on an upscaled crop of a smooth photo they are within a few grey levels, channels in RGB order
    (a swapped BGR, or a box off by a few pixels, is tens of levels away)."""
    data = photo_jpeg(300, 400)
    box = lambda h, w: (40, 60, 50, 70)  # noqa: E731 - upscaled to 96
    cv = imagenet_input.decode_crop_resize(data, box, 96, draft=False, backend="opencv").astype(int)
    pil = imagenet_input.decode_crop_resize(data, box, 96, draft=False, backend="pillow").astype(int)
    assert cv.shape == pil.shape == (96, 96, 3)
    assert np.abs(cv - pil).mean() < 2.0
    assert np.abs(cv - pil[..., ::-1]).mean() > 10 * np.abs(cv - pil).mean()
    shifted = imagenet_input.decode_crop_resize(data, lambda h, w: (45, 66, 50, 70), 96, False, "pillow")
    assert np.abs(cv - shifted).mean() > 3 * np.abs(cv - pil).mean()


@pytest.mark.parametrize("backend", imagenet_input.CPU_BACKENDS)
def test_exif_orientation_is_ignored_as_tensorflow_does(backend, photo_jpeg):
    """A JPEG tagged 'rotate 90' decodes unrotated, so the crop box (from the stored size) is right."""
    data = photo_jpeg(120, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    box = lambda h, w: (10, 150, 100, 40)  # noqa: E731 - inside 120 x 200 only if not rotated
    tagged = imagenet_input.decode_crop_resize(buf.getvalue(), box, 32, False, backend)
    plain = imagenet_input.decode_crop_resize(data, box, 32, False, backend)
    assert np.abs(tagged.astype(int) - plain).mean() < 3.0  # re-encoding at q95 only


@pytest.mark.parametrize("backend", imagenet_input.CPU_BACKENDS)
def test_draft_decoding_decodes_smaller_and_stays_close(monkeypatch, backend, photo_jpeg):
    """A crop 4x the output decodes at 1/4 scale; the result is within a few grey levels of the
    full-size decode, for colour and greyscale JPEGs; a crop that cannot shrink decodes at full size."""
    from PIL import JpegImagePlugin

    asked = []  # the reduced scales asked for
    if backend == "pillow":
        real = JpegImagePlugin.JpegImageFile.draft
        spy = lambda self, *a: asked.append(a[1]) or real(self, *a)  # noqa: E731
        monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
        quarter = (640 // 4, 480 // 4)
    else:
        import cv2

        real = cv2.imdecode
        reduced = {cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_COLOR_8}
        monkeypatch.setattr(
            cv2,
            "imdecode",
            lambda buf, flags: (flags & ~128 in reduced and asked.append(flags & ~128)) or real(buf, flags),
        )
        quarter = cv2.IMREAD_REDUCED_COLOR_4
    for grey in (False, True):
        data = photo_jpeg(480, 640, grey)
        full = imagenet_input.decode_crop_resize(data, lambda h, w: (10, 20, 460, 600), 96, False, backend)
        assert not asked
        small = imagenet_input.decode_crop_resize(data, lambda h, w: (10, 20, 460, 600), 96, True, backend)
        assert asked.pop() == quarter and small.shape == full.shape == (96, 96, 3)
        # OpenCV's full-size path samples without antialiasing (as TensorFlow does) and its draft
        # box is rounded to whole pixels of the 1/4 image (here 2 px off at two edges), so it is
        # further from the draft decode than Pillow's; a box 8 px off is much further still.
        assert np.abs(small.astype(int) - full).mean() < (2.0 if backend == "pillow" else 5.0)
        off = imagenet_input.decode_crop_resize(data, lambda h, w: (18, 28, 460, 600), 96, False, backend)
        assert np.abs(off.astype(int) - full).mean() > 20.0
    imagenet_input.decode_crop_resize(photo_jpeg(480, 640), lambda h, w: (0, 0, 150, 150), 96, True, backend)
    assert not asked


def _jpeg(img, **kw):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_window_decoding_gives_the_whole_decodes_pixels(fresh_window_decoder, photo_jpeg):
    """Decoding only the crop's window gives the pixels of OpenCV's whole decode, cropped: colour
    (4:2:0 and 4:4:4 chroma), greyscale, odd sizes, boxes at every edge and at odd offsets."""
    pytest.importorskip("nvidia.nvimgcodec")
    rng = np.random.default_rng(0)
    photo = np.asarray(Image.open(io.BytesIO(photo_jpeg(203, 317))))
    files = {
        "420": _jpeg(photo, quality=90),
        "444": _jpeg(photo, quality=90, subsampling=0),
        "grey": photo_jpeg(203, 317, grey=True),
        "noise": _jpeg(rng.integers(0, 256, (77, 131, 3), dtype=np.uint8), quality=75),
    }
    for name, jpeg in files.items():
        whole = _decoded(jpeg, "opencv")
        h, w = whole.shape[:2]
        boxes = [(0, 0, h, w), (0, 0, 17, 23), (h - 19, w - 29, 19, 29), (5, 3, h - 10, 1), (1, 7, 1, w - 7)]
        boxes += [imagenet_input.inception_crop_box(rng, h, w, 32) for _ in range(20)]
        for top, left, bh, bw in boxes:
            window = imagenet_input.decode_window(jpeg, (top, left, bh, bw))
            np.testing.assert_array_equal(window, whole[top : top + bh, left : left + bw], err_msg=name)
        for seed in range(3):
            a = imagenet_input.train_example({"image": jpeg, "label": 1}, np.random.default_rng(seed), 48, False)
            b = imagenet_input.train_example(
                {"image": jpeg, "label": 1}, np.random.default_rng(seed), 48, False, window=True
            )
            np.testing.assert_array_equal(a["image"], b["image"])


def test_window_decoding_leaves_draft_crops_and_other_files_to_opencv(monkeypatch, fresh_window_decoder, photo_jpeg):
    """A crop that decodes at reduced scale, a CMYK JPEG (converted 1 level off OpenCV's) and a
    file the decoder does not take (PNG) go the OpenCV way: the same output as without the option."""
    pytest.importorskip("nvidia.nvimgcodec")
    data = photo_jpeg(480, 640)
    box = lambda h, w: (10, 20, 460, 600)  # noqa: E731 - 1/4 scale at 96
    calls = []
    real = imagenet_input.decode_window
    monkeypatch.setattr(jpeg_decode, "decode_window", lambda *a: calls.append(a) or real(*a))
    draft = imagenet_input.decode_crop_resize(data, box, 96, True, window=True)
    assert not calls
    np.testing.assert_array_equal(draft, imagenet_input.decode_crop_resize(data, box, 96, True))
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "PNG")
    png = imagenet_input.decode_crop_resize(buf.getvalue(), box, 96, False, window=True)
    assert len(calls) == 1 and real(buf.getvalue(), (10, 20, 460, 600)) is None
    np.testing.assert_array_equal(png, imagenet_input.decode_crop_resize(buf.getvalue(), box, 96, False))
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("CMYK").save(buf, "JPEG", quality=90)
    assert real(buf.getvalue(), (10, 20, 460, 600)) is None
    cmyk = imagenet_input.decode_crop_resize(buf.getvalue(), box, 96, False, window=True)
    np.testing.assert_array_equal(cmyk, imagenet_input.decode_crop_resize(buf.getvalue(), box, 96, False))
