"""nvjpeg's host-side bookkeeping, and the nvImageCodec window path with stand-ins (the GPU decoding itself
needs PyTorch with CUDA: not in CI)."""

import threading
import types

import numpy as np

from qresnet import nvjpeg


class _Copy:
    """A device copy that is ready when told; records waits."""

    def __init__(self):
        self.ready, self.waited = False, False

    def is_ready(self):
        return self.ready

    def block_until_ready(self):
        self.waited = self.waited or not self.ready
        self.ready = True
        return self


def _held():
    return [source for _, source in nvjpeg._local.__dict__.get("held", [])]


def test_a_decoded_batch_is_held_until_its_copy_is_ready_and_at_most_most_are_held():
    def body():
        copies = [_Copy() for _ in range(4)]
        nvjpeg._hold(copies[0], "b0", most=3)
        nvjpeg._hold(copies[1], "b1", most=3)
        assert _held() == ["b0", "b1"]  # neither copy done: torch must not reuse their memory
        copies[0].ready = True
        nvjpeg._hold(copies[2], "b2", most=3)
        assert _held() == ["b1", "b2"] and not copies[0].waited
        nvjpeg._hold(copies[3], "b3", most=2)  # over the bound: waits for the oldest copy
        assert _held() == ["b2", "b3"] and copies[1].waited

    errors = []

    def run():
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    t = threading.Thread(target=run)  # a decoding thread's own list, as in the pipeline
    t.start()
    t.join()
    if errors:
        raise errors[0]
    assert _held() == []  # not this thread's


class _Arr:
    """A stand-in CUDA tensor: a numpy array with the few torch methods `_windows` uses."""

    def __init__(self, a):
        self.a = np.asarray(a)

    def permute(self, *axes):
        return _Arr(self.a.transpose(axes))

    def cuda(self):
        return self

    def __getitem__(self, index):
        return _Arr(self.a[index])


class _FakeNvimgcodec:
    """nvImageCodec's Python API as `_windows` calls it: records the decoder's arguments; `decode`
    returns the window's pixels (its box's numbers) or, for the files in `refused`, None."""

    NVIMGCODEC_DEVICE_CPU_ONLY = -1
    BackendKind = types.SimpleNamespace(HW_GPU_ONLY="hw", GPU_ONLY="gpu", HYBRID_CPU_GPU="hybrid", CPU_ONLY="cpu")
    ColorSpec = types.SimpleNamespace(SRGB="srgb")

    def __init__(self, refused=()):
        self.refused, self.made = set(refused), []
        self.Backend = lambda kind: ("backend", kind)
        self.DecodeParams = lambda **kw: kw
        self.Region = lambda *box: box
        fake = self

        class CodeStream:
            def __init__(self, data):
                self.data = data

            def get_sub_code_stream(self, region):
                return (self.data, region)

        class Decoder:
            def __init__(self, **kw):
                fake.made.append(kw)

            def decode(self, streams, params, cuda_stream):
                return [None if d in fake.refused else np.full((r[2] - r[0], r[3] - r[1], 3), r[0]) for d, r in streams]

        self.CodeStream, self.Decoder = CodeStream, Decoder


def _fake_torch():
    cuda = types.SimpleNamespace(current_device=lambda: 0, current_stream=lambda: types.SimpleNamespace(cuda_stream=0))
    torch = types.SimpleNamespace(
        cuda=cuda,
        uint8=np.uint8,
        as_tensor=lambda a, device: _Arr(a),
        from_numpy=_Arr,
        frombuffer=lambda buf, dtype: _Arr(np.frombuffer(buf, np.uint8)),
    )
    # torchvision on the CPU, for the files nvImageCodec refuses: a whole 3x40x50 image, its pixels 7.
    tio = types.SimpleNamespace(
        ImageReadMode=types.SimpleNamespace(RGB="rgb"), decode_image=lambda t, mode: _Arr(np.full((3, 40, 50), 7))
    )
    return torch, tio


def _windows_with(monkeypatch, fake, jpegs, boxes):
    monkeypatch.setattr(nvjpeg, "_nvimgcodec", lambda: fake)
    result = {}

    def body():  # a fresh thread: `_windows` makes one decoder per thread
        try:
            result["out"] = nvjpeg._windows(*_fake_torch(), jpegs, boxes)
        except nvjpeg.NvjpegError as e:
            result["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return result


def test_gpu_windows_allow_fancy_upsampling_on_old_nvjpeg_and_use_the_gpus_backends_only(monkeypatch):
    # nvJPEG < 13.2 (torchvision's own copy, loaded first in a process that also uses torchvision)
    # refuses crop windows with fancy upsampling unless told: every image came back None (session 20).
    fake = _FakeNvimgcodec()
    out = _windows_with(monkeypatch, fake, [b"a", b"b"], [(2, 3, 4, 5), (0, 1, 6, 2)])["out"]
    [made] = fake.made
    assert set(made["options"].split()) == {
        "nvjpeg_hw_decoder:enable_roi_fancy_upsampling=1",
        "nvjpeg_cuda_decoder:enable_roi_fancy_upsampling=1",
    }
    assert [b[1] for b in made["backends"]] == ["hw", "gpu", "hybrid"]  # no silent CPU-only decoding
    assert [o.a.shape for o in out] == [(3, 4, 5), (3, 6, 2)]  # CHW windows
    assert out[0].a.max() == 2 and out[1].a.max() == 0


def test_gpu_windows_decode_refused_files_on_the_cpu_and_fail_clearly_when_all_are(monkeypatch):
    out = _windows_with(
        monkeypatch, _FakeNvimgcodec(refused={b"cmyk"}), [b"a", b"cmyk"], [(2, 3, 4, 5), (10, 20, 8, 9)]
    )
    assert out["out"][1].a.shape == (3, 8, 9) and (out["out"][1].a == 7).all()  # torchvision's, cropped
    error = _windows_with(monkeypatch, _FakeNvimgcodec(refused={b"a"}), [b"a"], [(0, 0, 4, 4)])["error"]
    assert "decoded none of the batch" in str(error) and "gpu_decoder=torchvision" in str(error)
