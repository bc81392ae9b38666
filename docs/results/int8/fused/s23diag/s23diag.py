"""Session 23 diagnosis: why is the fused integer ResNet-20 (batch 1024) 0.28x bf16 while ResNet-50 is 1.33x?"""
import json, os, sys, re, collections
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from qresnet import export, fused, resnet, inference_bench
from qresnet.quant import resolve_specs
from benchmarks.int8_probe import hlo_summary

OUT = os.environ.get("OUT", "/tmp")
TAG = sys.argv[1] if len(sys.argv) > 1 else "default"
DN = ("NHWC", "HWIO", "NHWC")
ms = lambda fn, *a: 1e3 * inference_bench.median_seconds(fn, *a, iters=30, warmup=3)

def emit(d):
    d["tag"] = TAG
    print(json.dumps(d), flush=True)
    with open(f"{OUT}/diag.jsonl", "a") as f:
        f.write(json.dumps(d) + "\n")

def micro(B, H, C, Cout, stride, k=3):
    kx, kw = jax.random.split(jax.random.key(0))
    x8 = jax.random.randint(kx, (B, H, H, C), -128, 128, jnp.int32).astype(jnp.int8)
    w8 = jax.random.randint(kw, (k, k, C, Cout), -127, 128, jnp.int32).astype(jnp.int8)
    b = jnp.linspace(-3, 3, Cout, dtype=jnp.float32)
    pads = [(k // 2, k // 2)] * 2
    def fz(x, w, b):
        acc = lax.conv_general_dilated(x, w, (stride,) * 2, pads, dimension_numbers=DN, preferred_element_type=jnp.float32)
        return fused._to_int8(jnp.maximum(acc * 0.001 + b, 0.0))
    def f32out(x, w, b):
        return lax.conv_general_dilated(x, w, (stride,) * 2, pads, dimension_numbers=DN, preferred_element_type=jnp.float32) + b
    def bf(x, w, b):
        y = lax.conv_general_dilated(x, w, (stride,) * 2, pads, dimension_numbers=DN)
        return jax.nn.relu(y + b.astype(jnp.bfloat16))
    xb, wb = x8.astype(jnp.bfloat16), w8.astype(jnp.bfloat16)
    r = {"B": B, "H": H, "C": C, "Cout": Cout, "stride": stride, "k": k}
    for name, f, args in (("int8_fused", fz, (x8, w8, b)), ("int8_f32out", f32out, (x8, w8, b)), ("bf16", bf, (xb, wb, b))):
        j = jax.jit(f)
        txt = j.lower(*args).compile().as_text()
        convs = [l.strip()[:300] for l in txt.splitlines() if "__cudnn$conv" in l]
        r[name + "_ms"] = ms(j, *args)
        r[name + "_hlo"] = hlo_summary(txt)
        r[name + "_conv"] = convs[:2]
    emit(r)

def resnet20(width, batch, dump=False):
    name, classes, shape = "resnet20", 10, (32, 32, 3)
    names = resnet.layer_names(name, width, classes, shape)
    specs = resolve_specs(inference_bench.W8A8_FUSED, names, resnet.signed_layers(names))
    fake = resnet.create_model(name, num_classes=classes, specs=specs, fold_bn=True, width=width)
    variables = fake.init(jax.random.key(1), jnp.zeros((1, *shape)))
    variables = {**variables, "quant_stats": jax.tree.map(lambda b: jnp.full_like(b, 4.0), variables["quant_stats"])}
    header = {"model": name, "num_classes": classes, "width": width, "fold_bn": True, "specs": {n: s.to_dict() for n, s in specs.items()}}
    iv = export.integer_variables(variables, specs)
    model = export.int_model(header, iv)
    iv = jax.device_put(iv)
    x = jax.random.normal(jax.random.key(2), (batch, *shape), jnp.float32)
    fwd, _ = fused.compile_forward(model, iv, x)
    folded = resnet.create_model(name, num_classes=classes, dtype="bfloat16", fold_bn=True, width=width)
    fj = jax.jit(lambda v, x: folded.apply(v, x))
    fv = {"params": variables["params"]}
    txt = fwd.lower(iv, x).compile().as_text()
    if dump:
        open(f"{OUT}/fused_resnet20_w{width}.hlo.txt", "w").write(txt)
    emit({"model": name, "width": width, "batch": batch, "rounding": model.rounding, **model.check,
          "int8_fused_ms": ms(fwd, iv, x), "bf16_folded_ms": ms(fj, fv, x), "hlo": hlo_summary(txt),
          "bf16_hlo": hlo_summary(fj.lower(fv, x).compile().as_text())})

if __name__ == "__main__":
    print(jax.devices(), os.environ.get("XLA_FLAGS"), flush=True)
    for B, H, C, s in ((1024, 32, 16, 1), (1024, 32, 32, 1), (1024, 16, 32, 1), (1024, 8, 64, 1), (1024, 32, 64, 1), (256, 56, 64, 1)):
        micro(B, H, C, C, s)
    if TAG == "default":
        for w in (1, 2, 4):
            resnet20(w, 1024, dump=(w == 1))
        resnet20(1, 4096)
