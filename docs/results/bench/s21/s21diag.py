# session 21 (#3): which of nvImageCodec's GPU backends decodes the crop windows, how fast, and at what CPU cost?
# Each backend alone (and the order qresnet uses), windows of 256 synthetic ImageNet-sized JPEGs, the options qresnet
# passes (a560c1d); images/s over 10 batches and the process's CPU seconds per second (the hybrid backend does the
# Huffman decoding on the CPU, which the grain workers need).
import time, numpy as np
from pathlib import Path
from benchmarks.input_pipeline import write_jpegs, JpegSource
from qresnet import imagenet_input as ii

p = Path("/tmp/diag_j.npz")
if not p.exists():
    write_jpegs(p, 256)
src = JpegSource(p)
plans = [ii.plan_train(src[i], np.random.default_rng(i), 224) for i in range(256)]
from nvidia import nvimgcodec
import torch
opts = " ".join(f"{d}:enable_roi_fancy_upsampling=1" for d in ("nvjpeg_hw_decoder", "nvjpeg_cuda_decoder"))
params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB)
for kinds in (["HW_GPU_ONLY"], ["HYBRID_CPU_GPU"], ["HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU"]):
    try:
        dec = nvimgcodec.Decoder(device_id=0, backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, k)) for k in kinds], options=opts)
    except Exception as e:
        print(kinds, "Decoder() failed:", e, flush=True); continue
    def batch():
        streams = [nvimgcodec.CodeStream(bytes(pl["jpeg"])).get_sub_code_stream(
            region=nvimgcodec.Region(int(pl["box"][0]), int(pl["box"][1]), int(pl["box"][0] + pl["box"][2]), int(pl["box"][1] + pl["box"][3])))
            for pl in plans]
        ims = dec.decode(streams, params=params)
        torch.cuda.synchronize()
        return sum(im is not None for im in ims)
    ok = batch()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(10):
        batch()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"{'+'.join(kinds):40s} decoded {ok}/256 windows; {2560 / wall:8.0f} images/s; CPU {cpu / wall:.2f} s/s", flush=True)
