"""Session 23 diagnosis 2: device time per instruction of the fused ResNet-20 (widths 1, 4) and its BN-folded bf16
network; and a variant that leaves convs with fewer than 32 channels unfused (int8 conv with float32 output, rounded
in the graph)."""
import json, os, sys, time
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
from qresnet import export, fused, resnet, inference_bench
from qresnet.quant import resolve_specs
from benchmarks import profile_step

OUT = Path(os.environ.get("OUT", "/tmp"))

def emit(d):
    print(json.dumps(d)[:1500], flush=True)
    with open(OUT / "diag2.jsonl", "a") as f:
        f.write(json.dumps(d) + "\n")

class Narrow(fused.FusedResNet):
    min_c = 32
    def _fused(self, a, x, x_grid, path, stride, out, side=None, relu=True):
        self._narrow = x.shape[-1] < self.min_c or fused._get(a["params"], path)["kernel_int"].shape[-1] < self.min_c
        return super()._fused(a, x, x_grid, path, stride, out, side, relu)
    def _epilogue(self, acc, x_grid, path, bias, out, side, relu):
        if self._narrow and self.rounding == "cudnn":
            s_in = np.float32(x_grid.scale) * np.float32(self.w_scale[path])
            return self._rounded(acc, s_in, self._bias(bias, s_in, path, acc.shape[-1]), out, side, relu)
        return super()._epilogue(acc, x_grid, path, bias, out, side, relu)

class PadStem(fused.FusedResNet):
    """The CIFAR stem as an int8 conv over its input codes zero-padded to 32 channels, fused like the block convs."""
    def _stem(self, a, x, out):
        from qresnet.quant import ops
        spec, path = self.specs["stem"], ("stem",)
        p = a["params"]["stem"]
        q, _ = ops.int_codes(x, spec.a_bits, a["quant_stats"]["stem"]["act_bound"], bool(spec.a_signed), spec.pow2_scale)
        q = jnp.pad(q.astype(jnp.int8), [(0, 0)] * 3 + [(0, 32 - q.shape[-1])])
        w = self._kernel(p["kernel_int"], 32)
        acc = fused._conv(q, w, 1, [(1, 1)] * 2, jnp.float32)
        return self._epilogue(acc, self.act[path], path, p["bias"], out, None, True)

def pad_vars(iv, c=32):
    """Every conv's channel axes below c zero-padded to c (the stem's input axis, the image's, left)."""
    def walk(t, path):
        if "kernel_int" in t and path[-1] != "head":
            w = np.asarray(t["kernel_int"]); cin, cout = w.shape[2], w.shape[3]
            pin = 0 if path[-1] == "stem" or cin >= c else c - cin
            pout = 0 if cout >= c else c - cout
            t = dict(t)
            t["kernel_int"] = np.pad(w, [(0, 0), (0, 0), (0, pin), (0, pout)])
            t["bias"] = np.pad(np.asarray(t["bias"]), [(0, pout)])
            t["w_scale"] = np.pad(np.asarray(t["w_scale"]), [(0, pout)], mode="edge")
            return t
        return {k: walk(v, path + (k,)) if isinstance(v, dict) else v for k, v in t.items()}
    return {**iv, "params": walk(iv["params"], ())}

def build(width, batch):
    name, classes, shape = "resnet20", 10, (32, 32, 3)
    names = resnet.layer_names(name, width, classes, shape)
    specs = resolve_specs(inference_bench.W8A8_FUSED, names, resnet.signed_layers(names))
    fake = resnet.create_model(name, num_classes=classes, specs=specs, fold_bn=True, width=width)
    variables = fake.init(jax.random.key(1), jnp.zeros((1, *shape)))
    variables = {**variables, "quant_stats": jax.tree.map(lambda b: jnp.full_like(b, 4.0), variables["quant_stats"])}
    header = {"model": name, "num_classes": classes, "width": width, "fold_bn": True, "specs": {n: s.to_dict() for n, s in specs.items()}}
    iv = export.integer_variables(variables, specs)
    x = jax.random.normal(jax.random.key(2), (batch, *shape), jnp.float32)
    folded = resnet.create_model(name, num_classes=classes, dtype="bfloat16", fold_bn=True, width=width)
    return header, iv, x, folded, {"params": variables["params"]}

def prof(tag, fn, args):
    for _ in range(3):
        jax.block_until_ready(fn(*args))
    def run_once():
        t0 = time.perf_counter(); jax.block_until_ready(fn(*args)); return time.perf_counter() - t0
    s = profile_step.profile_call(tag, fn.lower(*args), run_once, steps=10, out=OUT)
    s["ops_ms"] = s["ops_ms"][:40]; s["kernels_ms"] = s["kernels_ms"][:40]
    emit(s)

if __name__ == "__main__":
    for width in (1, 4):
        header, iv, x, folded, fv = build(width, 1024)
        fj = jax.jit(lambda v, x: folded.apply(v, x))
        ivd = jax.device_put(iv)
        prof(f"w{width}_bf16_folded", fj, (fv, x))
        for cm in ("auto", 1) if width == 1 else ("auto",):
            model = fused.FusedResNet(header, iv, channel_multiple=cm)
            fwd, _ = fused.compile_forward(model, ivd, x)
            emit({"width": width, "channel_multiple": model.channel_multiple, "check": model.check, "rounding": model.rounding})
            prof(f"w{width}_int8_fused_cm{model.channel_multiple}", fwd, (ivd, x))
        if width == 1:
            nar = Narrow(header, iv, rounding="cudnn", channel_multiple=1)
            nj = jax.jit(lambda v, x: nar.apply(v, x))
            txt = nj.lower(ivd, x).compile().as_text()
            ex = fused.FusedResNet(header, iv, rounding="explicit")
            ej = jax.jit(lambda v, x: ex.apply(v, x))
            yn, ye = np.asarray(nj(ivd, x)), np.asarray(ej(ivd, x))
            emit({"narrow_fused_convs": nar.fused_convs(txt), "max_abs_vs_explicit": float(np.max(np.abs(yn - ye))),
                  "narrow_ms": 1e3 * inference_bench.median_seconds(nj, ivd, x, iters=30, warmup=3),
                  "explicit_ms": 1e3 * inference_bench.median_seconds(ej, ivd, x, iters=30, warmup=3),
                  "fused_ms": 1e3 * inference_bench.median_seconds(fwd, ivd, x, iters=30, warmup=3),
                  "folded_ms": 1e3 * inference_bench.median_seconds(fj, fv, x, iters=30, warmup=3)})
            prof("w1_int8_narrow", nj, (ivd, x))
            for tag, cm in (("int8stem_unpadded", 1), ("int8stem_padded", 32)):
                vv = ivd
                sm = PadStem(header, iv, channel_multiple=cm)
                sj, _ = fused.compile_forward(sm, vv, x)
                ys = np.asarray(sj(vv, x))
                emit({"variant": tag, "check": sm.check, "rounding": sm.rounding, "max_abs_vs_explicit": float(np.max(np.abs(ys - ye))),
                      "ms": 1e3 * inference_bench.median_seconds(sj, vv, x, iters=30, warmup=3)})
                prof(f"w1_int8_{tag}", sj, (vv, x))
