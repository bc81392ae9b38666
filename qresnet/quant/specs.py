"""Per-layer quantization specs and the ordered rules that assign them.

A rule is (regex, w_bits, a_bits[, options]); the regex must fullmatch a
stable layer name; the first matching rule wins; None bits mean float.
`resolve_specs` turns rules into a frozen {layer: QuantSpec} map once.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BOUND_METHODS = ("ema_max", "fixed", "lsq")
WEIGHT_BOUND_METHODS = ("max_abs", "lsq")
GRANULARITIES = ("per_channel", "per_tensor")
LSQ_STARTS = ("mean", "max")
WEIGHT_GRIDS = ("symmetric", "full")
WEIGHT_STES = ("clipped", "pass")


class SpecError(ValueError):
    """A rule or spec that cannot be used, with the fix in its message."""


def _check_bits(value: Any, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(
            f"{what} must be an int from 1 to 8 or None (float), got {value!r} "
            f"({type(value).__name__}); write e.g. 4, not '4'"
        )
    if not 1 <= value <= 8:
        raise SpecError(f"{what} must be from 1 to 8 or None (float), got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How one conv/dense layer is quantized.

    Attributes:
      w_bits: kernel bits (1..8) or None for a float kernel.
      a_bits: input-activation bits (1..8) or None for float inputs.
      w_granularity: "per_channel" (one bound per output channel) or "per_tensor".
      a_granularity: "per_channel" (one bound per input channel, the paper) or
        "per_tensor" (what an integer conv can apply exactly).
      a_bound: "ema_max" (EMA of the batch max, frozen when activation
        quantization starts), "fixed" (`a_fixed_bound`) or "lsq" (learned).
      w_bound: "max_abs" (the paper: max|W| per channel, a grid that wastes most codes below
        4 bits) or "lsq" (a learned step per channel, started from the kernel's statistics).
      a_signed: signed grid for the input; None lets the model decide (the paper:
        signed for the stem and each stage's first conv1, unsigned elsewhere).
      a_fixed_bound: the bound used by "fixed".
      a_ema_coeff: EMA coefficient of "ema_max".
      pow2_scale: every scale of the layer a power of two (2^floor(log2(N / bound)): the input's,
        the kernel's, a projection's output's) and a conv's bias on its product's grid, offset by
        half a step (`ops.bias_on_grid`): then a fused integer conv's epilogue (scale, bias,
        residual) is exact in float32 in any order and no value lands on a rounding boundary, so
        cuDNN's int8 output equals the fake-quant model's codes to the bit (`qresnet.fused`).
        At most one bit of each grid's range goes unused. Not with "lsq" bounds.
      w_lsq_start: where a learned ("lsq") kernel bound starts: "mean" (LSQ's init, step
        2 mean|W| / sqrt(qmax)) or "max" (the paper's max|W| per channel), from which it then learns.
      a_lsq_start: the same for a learned input bound: "mean" (2 mean|x| / sqrt(qmax)) or "max"
        (the paper's bound, the EMA of the batch max; over the whole batch, also with replica statistics).
      w_grid: the kernel's signed grid: "symmetric" (the paper's codes -(2^(b-1)-1)..2^(b-1)-1, ternary
        at 2 bits) or "full" (also -2^(b-1), as LSQ's weights: {-2, -1, 0, 1} at 2 bits, 4 levels for 3;
        `ops.int_range`); "full" needs a learned kernel bound (w_bound="lsq") and 2 or more bits.
      w_ste: the kernel's straight-through gradient beyond a learned bound: "clipped" (LSQ's: none, so
        a weight past the bound learns only from weight decay) or "pass" (APoT's: as inside the range);
        the forward pass and the bound's gradient are the same. "pass" needs w_bound="lsq".
      w_standardize: the kernel standardized over the whole tensor before it is quantized, (W - mean) /
        std with both statistics held out of the gradient (APoT's weight normalization), so that its
        learned bound lives on one scale whatever weight decay does to W. The layer's output scales by
        1/std, which the BatchNorm after it absorbs: not for the head (a Dense without BN), and with
        model.fold_bn not at all (`resnet.check_fold_specs` refuses learned bounds). Needs w_bound="lsq".
    """

    w_bits: int | None = None
    a_bits: int | None = None
    w_granularity: str = "per_channel"
    a_granularity: str = "per_channel"
    a_bound: str = "ema_max"
    w_bound: str = "max_abs"
    a_signed: bool | None = None
    a_fixed_bound: float = 6.0
    a_ema_coeff: float = 0.1
    pow2_scale: bool = False
    w_lsq_start: str = "mean"
    a_lsq_start: str = "mean"
    w_grid: str = "symmetric"
    w_ste: str = "clipped"
    w_standardize: bool = False

    def __post_init__(self):
        _check_bits(self.w_bits, "w_bits")
        _check_bits(self.a_bits, "a_bits")
        for name, allowed in (
            ("w_granularity", GRANULARITIES),
            ("a_granularity", GRANULARITIES),
            ("a_bound", BOUND_METHODS),
            ("w_bound", WEIGHT_BOUND_METHODS),
            ("w_lsq_start", LSQ_STARTS),
            ("a_lsq_start", LSQ_STARTS),
            ("w_grid", WEIGHT_GRIDS),
            ("w_ste", WEIGHT_STES),
        ):
            if getattr(self, name) not in allowed:
                raise SpecError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.a_signed is not None and not isinstance(self.a_signed, bool):
            raise SpecError(f"a_signed must be True, False or None, got {self.a_signed!r}")
        if not (self.a_fixed_bound > 0 and math.isfinite(self.a_fixed_bound)):
            raise SpecError(f"a_fixed_bound must be > 0, got {self.a_fixed_bound}")
        if not 0 < self.a_ema_coeff <= 1:
            raise SpecError(f"a_ema_coeff must be in (0, 1], got {self.a_ema_coeff}")
        if not isinstance(self.pow2_scale, bool):
            raise SpecError(f"pow2_scale must be True or False, got {self.pow2_scale!r}")
        if self.pow2_scale and "lsq" in (self.a_bound, self.w_bound):
            raise SpecError(
                "pow2_scale rounds the scale down to a power of two, which stops LSQ's bound gradient; "
                "use a_bound='ema_max' or 'fixed' and w_bound='max_abs' with pow2_scale"
            )

        if self.w_full_grid and (self.w_bound != "lsq" or self.w_bits == 1):
            raise SpecError(
                f"w_grid='full' adds the code -2^(b-1) below a learned kernel bound, but this spec has "
                f"w_bound={self.w_bound!r} and w_bits={self.w_bits}: set w_bound='lsq' and 2 or more bits, "
                "or drop w_grid"
            )
        if not isinstance(self.w_standardize, bool):
            raise SpecError(f"w_standardize must be True or False, got {self.w_standardize!r}")
        if self.w_standardize and self.w_bound != "lsq":
            raise SpecError(
                f"w_standardize=True quantizes the standardized kernel against a learned bound, but w_bound="
                f"{self.w_bound!r}: set w_bound='lsq' or drop w_standardize"
            )
        if self.w_ste != "clipped" and self.w_bound != "lsq":
            raise SpecError(
                f"w_ste={self.w_ste!r} sets the kernel's gradient beyond a learned bound, but w_bound="
                f"{self.w_bound!r} clips nothing (max|W|): set w_bound='lsq' or drop w_ste"
            )
        for side, bound in (("w", self.w_bound), ("a", self.a_bound)):
            start = getattr(self, f"{side}_lsq_start")
            if start != "mean" and bound != "lsq":
                raise SpecError(
                    f"{side}_lsq_start={start!r} sets where a learned bound starts, but {side}_bound={bound!r} "
                    f"is not learned: set {side}_bound='lsq' or drop {side}_lsq_start"
                )

    @property
    def w_full_grid(self) -> bool:
        """Whether the kernel takes the full two's-complement grid (`w_grid="full"`, `ops.int_range`)."""
        return self.w_grid == "full"

    @property
    def is_float(self) -> bool:
        return self.w_bits is None and self.a_bits is None

    def to_dict(self) -> dict[str, Any]:
        """The fields, less those in `_OMITTED_AT_DEFAULT` that hold their default: records (config.json)
        of runs made before an option existed then read the same as today's, so the run keeps its
        identity (`results.run_identity`) and resumes."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if not (k in _OMITTED_AT_DEFAULT and v == _DEFAULTS[k])}


FLOAT = QuantSpec()
# Options added after runs were recorded: omitted from a spec's record at their default (`QuantSpec.to_dict`).
_OMITTED_AT_DEFAULT = ("w_lsq_start", "a_lsq_start", "w_grid", "w_ste", "w_standardize")
_DEFAULTS = dataclasses.asdict(FLOAT)
_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(QuantSpec))[2:]


@dataclasses.dataclass(frozen=True)
class QuantRule:
    """A regex over layer names and the spec it assigns."""

    pattern: str
    spec: QuantSpec

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise SpecError(f"rule pattern {self.pattern!r} is not a valid regex: {e}") from e

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


def make_rule(rule: Sequence[Any] | QuantRule) -> QuantRule:
    """Builds a QuantRule from (regex, w_bits, a_bits[, {option: value}])."""
    if isinstance(rule, QuantRule):
        return rule
    if isinstance(rule, (str, bytes)) or not 3 <= len(rule) <= 4:
        raise SpecError(f"a rule is (regex, w_bits, a_bits[, options dict]), got {rule!r}; e.g. ('stem|head', 8, 8)")
    pattern, w_bits, a_bits = rule[0], rule[1], rule[2]
    options = dict(rule[3]) if len(rule) == 4 else {}
    if not isinstance(pattern, str):
        raise SpecError(f"a rule's first item must be a regex string, got {pattern!r}")
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise SpecError(f"rule {pattern!r} has unknown option(s) {unknown}; known: {list(_OPTION_NAMES)}")
    try:
        spec = QuantSpec(w_bits=w_bits, a_bits=a_bits, **options)
    except SpecError as e:
        raise SpecError(f"rule {pattern!r}: {e}") from e
    return QuantRule(pattern, spec)


def resolve_specs(
    rules: Iterable[Sequence[Any] | QuantRule],
    layer_names: Sequence[str],
    signed_layers: Iterable[str] = (),
) -> Mapping[str, QuantSpec]:
    """Assigns every layer the spec of the first rule whose regex fullmatches it.

    Args:
      rules: ordered rules, (regex, w_bits, a_bits[, options]) or QuantRule.
      layer_names: every quantizable layer of the model, in order.
      signed_layers: layers whose input is signed by default (used where a
        spec's a_signed is None).

    Returns:
      A read-only {layer: QuantSpec} in layer order, a_signed filled in.

    Raises:
      SpecError: a rule matches no layer (or only layers an earlier rule took),
        or a layer is matched by no rule.
    """
    rules = [make_rule(r) for r in rules]
    if not rules:
        raise SpecError("no quantization rules; add a catch-all such as ('.*', None, None)")
    signed_layers = set(signed_layers)
    specs: dict[str, QuantSpec] = {}
    used = [False] * len(rules)
    unmatched = []
    for name in layer_names:
        for i, rule in enumerate(rules):
            if rule.matches(name):
                spec = rule.spec
                if spec.a_signed is None:
                    spec = dataclasses.replace(spec, a_signed=name in signed_layers)
                specs[name] = spec
                used[i] = True
                break
        else:
            unmatched.append(name)
    if unmatched:
        raise SpecError(
            f"layer(s) {unmatched} match no rule; add a rule for them or end the "
            "rules with a catch-all such as ('.*', None, None)"
        )
    for rule, was_used in zip(rules, used):
        if was_used:
            continue
        if any(rule.matches(n) for n in layer_names):
            raise SpecError(
                f"rule {rule.pattern!r} is never used: every layer it matches is taken by "
                "an earlier rule; move it up or remove it"
            )
        raise SpecError(
            f"rule {rule.pattern!r} matches no layer; layer names look like "
            f"{list(layer_names)[:4]} (see `qresnet cost`); fix the regex or remove the rule"
        )
    return types.MappingProxyType(specs)


def specs_to_json(specs: Mapping[str, QuantSpec]) -> dict[str, dict[str, Any]]:
    """{layer: spec fields} for config.json."""
    return {name: spec.to_dict() for name, spec in specs.items()}


def specs_from_json(data: Mapping[str, Mapping[str, Any]]) -> Mapping[str, QuantSpec]:
    """Inverse of `specs_to_json`."""
    return types.MappingProxyType({n: QuantSpec(**d) for n, d in data.items()})


def bits_label(specs: Mapping[str, QuantSpec]) -> str:
    """A setting's name from its specs' bits: "bf16" when every layer is float, "wXaY" for the most
    common (w_bits, a_bits) pair ("f" for a float side), "_ends8" when only the stem and head differ
    and are 8-bit, "_mixed" when other layers differ. Options (granularity, bounds) are not named."""
    pairs = {name: (s.w_bits, s.a_bits) for name, s in specs.items()}
    if all(p == (None, None) for p in pairs.values()):
        return "bf16"
    common = collections.Counter(pairs.values()).most_common(1)[0][0]
    label = "w{}a{}".format(*("f" if b is None else b for b in common))
    others = {n: p for n, p in pairs.items() if p != common}
    if not others:
        return label
    if set(others) <= {"stem", "head"} and all(p == (8, 8) for p in others.values()):
        return label + "_ends8"
    return label + "_mixed"


def label_agrees(setting: str, specs: Mapping[str, QuantSpec]) -> bool:
    """Whether a setting name's bits (its leading "bf16", "float" or "wXaY[_ends8]") are those of
    `specs`; names that state no bits ("my_run") agree with any specs."""
    derived = bits_label(specs)
    name = setting.lower()
    if name in ("bf16", "float", "float32", "fp32", "bfloat16") or name.startswith("bf16_"):
        return derived == "bf16"
    m = re.match(r"(w(?:\d+|f)a(?:\d+|f))(_ends8)?", name)
    if m is None:
        return True
    return derived.split("_mixed")[0] == m[1] + (m[2] or "") or (m[2] is None and derived == m[1] + "_mixed")
