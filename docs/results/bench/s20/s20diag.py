# session 20 call 5 (#3): why did nvImageCodec decode none of the probe's batch on the GPU, yet feed a ResNet-50?
# Which libnvjpeg the process maps, and per backend kind, ROI or whole image, decoder options: how many images come back,
# with nvImageCodec used before (argv[1] == "nv_first") or after torchvision's nvJPEG decoded on the GPU.
import sys, glob, numpy as np, cv2

order = sys.argv[1]
rng = np.random.default_rng(0)
jpegs = []
for i in range(16):
    x = cv2.resize(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), (500, 375), interpolation=cv2.INTER_CUBIC)
    jpegs.append(cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())

def maps():
    return sorted({l.split()[-1] for l in open("/proc/self/maps") if "nvjpeg" in l and ".so" in l})

def torch_decode():
    import torch, torchvision.io as tio
    t = torch.frombuffer(bytearray(jpegs[0]), dtype=torch.uint8)
    y = tio.decode_jpeg([t], device="cuda")[0]
    torch.cuda.synchronize()
    print("torchvision decode_jpeg cuda ok", tuple(y.shape), "maps", maps(), flush=True)

def nv_grid():
    from nvidia import nvimgcodec
    print("nvimgcodec", getattr(nvimgcodec, "__version__", "?"), "maps", maps(), flush=True)
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB)
    for kind in ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU"):
        for opts in ("", ":fancy_upsampling=0", "nvjpeg_cuda_decoder:enable_roi_fancy_upsampling=1"):
            try:
                dec = nvimgcodec.Decoder(device_id=0, backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))], options=opts)
            except Exception as e:
                print(kind, repr(opts), "Decoder() failed:", e, flush=True); continue
            for roi in (False, True):
                streams = [nvimgcodec.CodeStream(b) for b in jpegs]
                if roi:
                    streams = [s.get_sub_code_stream(region=nvimgcodec.Region(40, 60, 40 + 224, 60 + 300)) for s in streams]
                try:
                    ims = dec.decode(streams, params=params)
                    ok = [im for im in ims if im is not None]
                    print(f"{kind:15s} opts={opts!r:55s} roi={roi!s:5s} decoded {len(ok)}/{len(ims)}",
                          tuple(ok[0].shape) if ok else "", flush=True)
                except Exception as e:
                    print(kind, repr(opts), roi, "decode raised", repr(e)[:300], flush=True)
    print("maps after", maps(), flush=True)

print("libnvjpeg files:", glob.glob("/tmp/site/nvidia/*/lib/libnvjpeg*") + glob.glob("/usr/local/lib/python3*/*-packages/nvidia/*/lib/libnvjpeg*")
      + glob.glob("/usr/lib/python3*/*-packages/nvidia/*/lib/libnvjpeg*"), flush=True)
if order == "nv_first":
    nv_grid(); torch_decode()
else:
    torch_decode(); nv_grid()
