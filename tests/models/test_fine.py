"""FINE (arXiv 2606.14005): the module, its options, its place in the FPN, its overhead, ERF and heatmaps."""

import itertools

import numpy as np
import pytest
import torch

import msfusion as mf
from msfusion.analysis.complexity import MacCounter
from msfusion.analysis.erf import erf_map, fit_gaussian_sigma, sampled_token_erfs, stage_sigmas
from msfusion.analysis.heatmaps import capture_fine_maps, save_fine_heatmaps
from msfusion.models.align.fine import ATTENTIONS, FINE, MODULATIONS, _upsample_to
from msfusion.models.necks.fpn import FPN

C = 32


def _maps(H=23, W=31, s=2, batch=2, chs=C, high_chs=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, chs, H, W, generator=g)
    high = torch.randn(batch, high_chs or chs, -(-H // s), -(-W // s), generator=g)
    return low, high


def _twin(ref: FINE, **kwargs) -> FINE:
    other = FINE(ref.chs, ref.low_stride, ref.high_stride, num_heads=ref.num_heads, **kwargs)
    other.load_state_dict(ref.state_dict())
    return other


# -- shapes and gradients of every option, at odd sizes ---------------------------------------------


@pytest.mark.parametrize("attention,modulation", list(itertools.product(ATTENTIONS, MODULATIONS)))
def test_every_option_shape_and_gradient(attention, modulation):
    torch.manual_seed(0)
    fine = FINE(C, 8, 16, attention=attention, modulation=modulation, head_dim=8)
    low, high = _maps()
    low.requires_grad_(True)
    high.requires_grad_(True)
    out = fine(low, high)
    assert out.shape == low.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert low.grad is not None
    no_grad = [n for n, p in fine.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    if modulation != "none":
        assert high.grad is not None and high.grad.abs().sum() > 0


@pytest.mark.parametrize("down", ["avg", "max", "dwconv"])
@pytest.mark.parametrize("size", [(23, 31), (16, 16), (9, 5)])
def test_down_operators_odd_sizes(down, size):
    fine = FINE(C, 8, 16, down=down, head_dim=8)  # r*k = 4 does not divide 23, 31, 9, 5
    low, high = _maps(*size)
    out = fine(low, high)
    out.sum().backward()
    assert out.shape == low.shape
    assert all(p.grad is not None for p in fine.parameters())


def test_odd_sizes_each_pixel_gets_its_token():
    """M is constant over each r*k x r*k window and the partial last window gets the last token."""
    fine = FINE(C, 8, 16, head_dim=8)
    low, high = _maps(23, 31)
    m = fine.modulation_map(low, high)
    rk = fine.ratio * fine.kernel
    assert (rk, m.shape[-2:]) == (4, low.shape[-2:])
    tokens = m[..., ::rk, ::rk]  # (B, C, 6, 8): one value per window
    assert tokens.shape[-2:] == (6, 8)
    assert torch.equal(m, _upsample_to(tokens, rk, (23, 31), "nearest"))
    # The partial window (rows 20-22) averages only the pixels that exist: it differs from zero-padding.
    pooled = fine.sampling.low(low)
    assert torch.allclose(pooled[..., -1, 0], low[..., 20:23, 0:4].mean((-2, -1)), atol=1e-6)


def test_channel_unification():
    fine = FINE(C, 8, 16, high_chs=48, head_dim=8)
    low, high = _maps(high_chs=48)
    assert fine(low, high).shape == low.shape
    assert mf.count_params(fine) - mf.count_params(FINE(C, 8, 16, head_dim=8)) == 48 * C + C


# -- equivalences that pin the maths -----------------------------------------------------------------


def test_aats_with_rk_1_equals_vanilla():
    torch.manual_seed(0)
    aats = FINE(C, 8, 16, ratio=1, kernel=1, head_dim=8)
    vanilla = _twin(aats, attention="vanilla")
    low, high = _maps()
    torch.testing.assert_close(aats(low, high), vanilla(low, high), rtol=0, atol=1e-6)
    # The explicit (non-fused) path computes the same attention.
    vanilla.fused_attention = False
    torch.testing.assert_close(aats(low, high), vanilla(low, high), rtol=1e-5, atol=1e-5)


def test_window_covering_the_map_is_dense_attention_on_upsampled_high():
    """One window larger than the map (padded keys masked) = dense attention to the nearest-upsampled F_high."""
    torch.manual_seed(0)
    window = FINE(C, 8, 16, attention="window", window_size=32, head_dim=8)
    dense = FINE(C, 8, 8, attention="vanilla", head_dim=8)  # same resolution: stride ratio 1
    dense.load_state_dict(window.state_dict())
    low, high = _maps(13, 11)
    up = _upsample_to(high, 2, (13, 11), "nearest")
    torch.testing.assert_close(window(low, high), dense(low, up), rtol=1e-5, atol=1e-5)
    # Small windows: the fused and the explicit masked paths agree.
    window.window_size = 4
    fused = window(low, high)
    window.fused_attention = False
    torch.testing.assert_close(fused, window(low, high), rtol=1e-5, atol=1e-5)


def _window_projecting_after_upsampling(fine: FINE, low, high):
    """Window attention as first written: F_high upsampled to F_low's size, then W_K and W_V on every pixel."""
    B, C, H, W = low.shape
    M = fine.window_size
    up = _upsample_to(high, fine.scale, (H, W), "nearest")
    pad = (0, -W % M, 0, -H % M)
    low, up = torch.nn.functional.pad(low, pad), torch.nn.functional.pad(up, pad)
    valid = torch.nn.functional.pad(torch.ones(H, W, dtype=torch.bool), pad)
    nh, nw = low.shape[-2] // M, low.shape[-1] // M

    def windows(x):  # (..., C', Hp, Wp) -> (..., nW, M*M, C')
        x = x.unflatten(-2, (nh, M)).unflatten(-1, (nw, M))  # (..., C', nh, M, nw, M)
        return x.movedim(-5, -1).transpose(-4, -3).flatten(-5, -4).flatten(-3, -2)

    q, k, v = fine._heads(fine.q(windows(low))), fine._heads(fine.k(windows(up))), fine._heads(fine.v(windows(up)))
    attn = (q @ k.transpose(-2, -1)) * fine.head_dim**-0.5
    attn = attn.masked_fill(~windows(valid[None])[..., 0][:, None, None, :], float("-inf")).softmax(-1)
    out = fine.proj(fine._merge(attn @ v))  # (B, nW, M*M, C)
    out = out.reshape(B, nh, nw, M, M, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, nh * M, nw * M)
    return out[..., :H, :W]


@pytest.mark.parametrize("size,window", [((23, 31), 7), ((14, 21), 7), ((13, 11), 4)])
def test_window_projects_keys_before_upsampling(size, window):
    """K and V projected on F_high, then upsampled: the same result as projecting the upsampled map."""
    torch.manual_seed(0)
    fine = FINE(C, 8, 16, attention="window", window_size=window, modulation="replace", head_dim=8).double()
    low, high = (x.double() for x in _maps(*size))
    torch.testing.assert_close(fine(low, high), _window_projecting_after_upsampling(fine, low, high), rtol=0, atol=1e-6)


def test_window_projection_macs():
    """W_K, W_V run on the h x w pixels of F_high, W_Q, W_O on the H x W of F_low (Table 3, M = 7)."""
    chs, (H, W), (h, w), M = 64, (28, 35), (14, 18), 7
    with torch.device("meta"):
        fine = FINE(chs, 8, 16, attention="window", modulation="replace")
        low, high = torch.zeros(1, chs, H, W), torch.zeros(1, chs, h, w)
    fine.fused_attention = False  # the explicit softmax path: one scale multiply per query element
    counter = MacCounter()
    with torch.no_grad(), counter:
        fine(low, high)
    projections = 2 * H * W * chs * chs + 2 * h * w * chs * chs  # W_Q, W_O on F_low; W_K, W_V on F_high
    attention = 2 * H * W * M * M * chs  # Q K^T and A V within each 7 x 7 window (28 x 35 needs no padding)
    assert counter.total == projections + attention + H * W * chs


def test_area_with_one_area_is_vanilla():
    torch.manual_seed(0)
    area = FINE(C, 8, 16, attention="area", num_areas=1, head_dim=8)
    low, high = _maps()
    torch.testing.assert_close(area(low, high), _twin(area, attention="vanilla")(low, high), rtol=0, atol=1e-6)


def test_linear_attention_is_sima():
    torch.manual_seed(0)
    fine = FINE(C, 8, 16, attention="linear", modulation="replace", num_heads=1, qkv_bias=False)
    low, high = _maps(batch=1)
    q = low.flatten(2).transpose(1, 2) @ fine.q.weight.T
    k = high.flatten(2).transpose(1, 2) @ fine.k.weight.T
    v = high.flatten(2).transpose(1, 2) @ fine.v.weight.T
    q, k = q / q.abs().sum(1, keepdim=True), k / k.abs().sum(1, keepdim=True)
    expected = ((q @ (k.transpose(1, 2) @ v)) @ fine.proj.weight.T).transpose(1, 2).reshape(low.shape)
    torch.testing.assert_close(fine(low, high), expected, rtol=1e-4, atol=1e-5)


def test_modulations():
    torch.manual_seed(0)
    residual = FINE(C, 8, 16, head_dim=8)
    direct, replace = _twin(residual, modulation="direct"), _twin(residual, modulation="replace")
    low, high = _maps()
    m = residual.modulation_map(low, high)
    torch.testing.assert_close(residual(low, high), direct(low, high) + low)  # Eq. 9
    torch.testing.assert_close(direct(low, high), low * m)
    torch.testing.assert_close(replace(low, high), m)
    none = FINE(C, 8, 16, modulation="none")
    assert none(low, high) is low and mf.count_params(none) == 0


def test_none_in_fpn_is_the_plain_fpn():
    info = [dict(chs=c, reduction=s, module=f"s{i}") for i, (c, s) in enumerate([(8, 4), (16, 8), (24, 16), (32, 32)])]
    torch.manual_seed(0)
    plain = FPN(info, out_chs=C)
    off = FPN(info, out_chs=C, fine={"modulation": "none"})
    off.load_state_dict(plain.state_dict())
    feats = [torch.randn(1, d["chs"], -(-67 // d["reduction"]), -(-85 // d["reduction"])) for d in info]
    for a, b in zip(plain(feats), off(feats), strict=True):
        assert torch.equal(a, b)


# -- defaults, parameter deltas, the earlier version -------------------------------------------------


def test_paper_defaults():
    l3, l2 = FINE(256, 16, 32), FINE(256, 8, 16)  # Sec. 3: S2, S3, S4 at strides 8, 16, 32
    assert (l3.ratio, l3.kernel, l3.num_heads, l3.head_dim) == (2, 1, 16, 16)  # Sec. 5.3.2, Table 4
    assert (l2.ratio, l2.kernel) == (2, 2)
    assert (l3.attention, l3.modulation, l3.upsample) == ("aats", "residual", "nearest")
    # Both put the tokens on the stride-32 grid, one token per F_high token.
    assert l3.low_stride * l3.ratio * l3.kernel == l2.low_stride * l2.ratio * l2.kernel == 32


def test_parameter_deltas():
    assert mf.count_params(FINE(256, 8, 16)) == 4 * (256 * 256 + 256)  # W_Q, W_K, W_V, W_O (Eq. 5, 7)
    for attention in ATTENTIONS:
        assert mf.count_params(FINE(256, 8, 16, attention=attention)) == 263_168
    # Table 6: DWConv adds 6.14 K parameters over the two fusion stages (kernels 2x2; 4x4 and 2x2).
    dw = mf.count_params(FINE(256, 16, 32, down="dwconv")) + mf.count_params(FINE(256, 8, 16, down="dwconv"))
    assert dw - 2 * 263_168 == 6_144
    # The earlier version: + RMSNorm(16), FFN 256-1024-256, two LayerNorms: 0.79 M per module.
    assert mf.count_params(FINE(256, 8, 16, preset="earlier")) == 789_776


def test_earlier_preset_options():
    fine = FINE(C, 8, 16, preset="earlier", head_dim=8)
    assert (fine.attention, fine.modulation, fine.upsample, fine.use_pos_embed) == (
        "aats_linear",
        "direct",
        "bilinear",
        True,
    )
    assert fine.mlp is not None and fine.attn_norm is not None
    low, high = _maps()
    out = fine(low, high)
    assert out.shape == low.shape
    override = FINE(C, 8, 16, preset="earlier", modulation="residual", head_dim=8)
    override.load_state_dict(fine.state_dict())
    torch.testing.assert_close(override(low, high), out + low)


# -- overhead beside the paper (Table 1, Table 7) ----------------------------------------------------

R50 = [(256, 4), (512, 8), (1024, 16), (2048, 32)]
# ResNet-50 map sizes at 800x800 (where Table 1's torchvision baselines are reproduced) and at 512x1024.
SIZES_800 = {4: (200, 200), 8: (100, 100), 16: (50, 50), 32: (25, 25)}
SIZES_512 = {4: (128, 256), 8: (64, 128), 16: (32, 64), 32: (16, 32)}
FINE_AT = {8: "fine", 16: "fine"}  # the l = 2 and l = 3 fusion steps


def _neck_cost(sizes, **kwargs):
    info = [dict(chs=c, reduction=s, module=f"layer{i + 1}") for i, (c, s) in enumerate(R50)]
    with torch.device("meta"):
        neck = FPN(info, **kwargs).eval()
        feats = [torch.zeros(1, c, *sizes[s]) for c, s in R50]
    counter = MacCounter()
    with torch.no_grad(), counter:
        neck(feats)
    return mf.count_params(neck), counter.total


@pytest.mark.parametrize(
    "detector,neck_kwargs,paper",
    [
        ("faster_rcnn", dict(extra_levels=1, extra_type="maxpool"), (1.0, 1.1)),
        ("retinanet", dict(in_strides=(8, 16, 32), extra_levels=2), (1.0, 1.4)),
        ("fcos", dict(in_strides=(8, 16, 32), extra_levels=2), (1.0, 1.4)),
    ],
)
def test_overhead_on_detector_fpns(detector, neck_kwargs, paper):
    """Table 1: FINE adds +1.0 M each, +1.1 / +1.4 / +1.4 GFLOPs; measured on the FPN at 800x800.

    800x800 is where the count reproduces Table 1's baselines (torchvision's 134.4 / 151.5 / 128.2 G). The
    paper's module has W_Q, W_K, W_V, W_O only (Eq. 5-7): 0.263 M per fusion step, 0.526 M for the two steps
    the paper equips (l = 2, 3), about half of Table 1's +1.0 M (the earlier version with its FFN gives 1.58 M).
    The MACs, +0.73 G, are the same in the three FPNs (the same maps at strides 8-32), while Table 1's +1.1 and
    +1.4 G differ by more than rounding. Pinned here so a change to FINE shows up.
    """
    base_p, base_m = _neck_cost(SIZES_800, **neck_kwargs)
    fine_p, fine_m = _neck_cost(SIZES_800, align=FINE_AT, **neck_kwargs)
    assert fine_p - base_p == 2 * 263_168
    assert (fine_m - base_m) / 1e9 == pytest.approx(0.732, abs=0.0005)
    assert paper[0] - (fine_p - base_p) / 1e6 == pytest.approx(0.47, abs=0.01)  # the documented gap


def test_overhead_on_semantic_fpn():
    """Table 7 (Semantic FPN, 512x1024): +1.6 M, +0.8 G; the earlier version lands within 0.15 M and 20%."""
    base_p, base_m = _neck_cost(SIZES_512)
    paper_p, paper_m = _neck_cost(SIZES_512, align=FINE_AT)
    early_p, early_m = _neck_cost(SIZES_512, align=FINE_AT, align_kwargs={"preset": "earlier"})
    assert abs((early_p - base_p) / 1e6 - 1.6) < 0.15
    assert abs((early_m - base_m) / 1e9 - 0.8) / 0.8 < 0.2
    assert (paper_p - base_p, round((paper_m - base_m) / 1e9, 2)) == (526_336, 0.54)


def test_semantic_fpn_r50_counts():
    """Table 7: 28.5 M / 90.9 G without FINE, 30.1 M / 91.7 G with it (the earlier version's size)."""
    with torch.device("meta"):
        base = mf.create_model("semantic_fpn_r50")
        fine = mf.create_model("semantic_fpn_r50_fine")
        early = mf.create_model("semantic_fpn_r50_fine", fine={"preset": "earlier"})
    assert round(mf.count_params(base) / 1e6, 1) == 28.5
    assert abs(mf.count_macs(base, (1, 3, 512, 1024)) / 1e9 - 90.9) < 0.5
    assert mf.count_params(fine) - mf.count_params(base) == 526_336
    assert round(mf.count_params(early) / 1e6, 1) == 30.1
    assert [type(a).__name__ for a in fine.neck.aligns] == ["IdentityAlign", "FINE", "FINE"]
    assert [(a.low_stride, a.kernel) for a in fine.neck.aligns[1:]] == [(8, 2), (16, 1)]


def _bench_fine():
    """benchmarks/bench_fine.py as a module (the benchmarks folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fine.py"
    spec = importlib.util.spec_from_file_location("bench_fine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _OneFusion(torch.nn.Module):
    """A whole 'model' around one FINE step: F_low in, the aligned map out (F_high fixed)."""

    def __init__(self, fine, high):
        super().__init__()
        self.fine, self.high = fine, high

    def forward(self, low):
        return self.fine(low, self.high).relu() + 1


def test_bench_fine_peak_memory_whole_model_and_fine_own():
    """Table 3's Mem column: vanilla's materialised attention (4 heads x 256 x 64 floats) shows in both peaks."""
    bench = _bench_fine()
    low, high = _maps(16, 16, batch=1)
    peaks = {}
    for attention in ("vanilla", "aats"):
        torch.manual_seed(0)
        fine = FINE(C, 8, 16, attention=attention, head_dim=8).eval()
        fine.fused_attention = False
        peaks[attention] = bench.peak_memory(_OneFusion(fine, high), low)
    attention_bytes = 4 * 256 * 64 * 4
    assert peaks["vanilla"]["fine_mb"] * 2**20 >= attention_bytes
    assert peaks["vanilla"]["model_mb"] >= peaks["vanilla"]["fine_mb"] > 4 * peaks["aats"]["fine_mb"] > 0


def test_bench_fine_alternates_and_reports_ratio_spread():
    bench = _bench_fine()
    calls = []
    stats = bench.alternating_ratios(
        lambda: calls.append("base"), lambda: calls.append("fine"), runs=4, warmup=1, device=torch.device("cpu")
    )
    # Warm-up, then pairs whose order flips: base first, fine first, ...
    assert calls == ["base", "fine"] + ["base", "fine", "fine", "base"] * 2
    assert stats["ratio_min"] <= stats["ratio_q1"] <= stats["ratio"] <= stats["ratio_q3"] <= stats["ratio_max"]


def test_tiny_segmentor_with_fine_odd_input():
    torch.manual_seed(0)
    model = mf.create_model("test_semantic_fpn_fine")
    x = torch.randn(1, 3, 45, 61)
    y = model(x)
    assert y.shape == (1, 5, 45, 61)
    y.mean().backward()
    fines = [m for m in model.modules() if isinstance(m, FINE)]
    assert len(fines) == 2 and all(p.grad is not None for f in fines for p in f.parameters())


# -- bad input ---------------------------------------------------------------------------------------


def test_errors():
    with pytest.raises(ValueError, match="attention must be one of"):
        FINE(C, 8, 16, attention="deformable")
    with pytest.raises(ValueError, match="modulation must be one of"):
        FINE(C, 8, 16, modulation="gate")
    with pytest.raises(ValueError, match="down must be one of"):
        FINE(C, 8, 16, down="median")
    with pytest.raises(ValueError, match="preset must be one of"):
        FINE(C, 8, 16, preset="v3")
    with pytest.raises(ValueError, match=r"num_heads \(5\) must divide chs \(32\); allowed"):
        FINE(C, 8, 16, num_heads=5)
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        FINE(24, 8, 16)  # default d = 16 does not divide 24
    with pytest.raises(ValueError, match="must be a multiple of low_stride"):
        FINE(C, 8, 12)
    with pytest.raises(ValueError, match="not to 'window'"):
        FINE(C, 8, 16, attention="window", preset="earlier")
    with pytest.raises(ValueError, match="ratio must be a positive integer"):
        FINE(C, 8, 16, ratio=0)
    fine = FINE(C, 8, 16, head_dim=8)
    low, high = _maps()
    with pytest.raises(ValueError, match="reduced by the stride ratio"):
        fine(low, torch.randn(2, C, 6, 8))  # a quarter, not a half
    with pytest.raises(ValueError, match="pass high_chs"):
        fine(low, torch.randn(2, 16, 12, 16))
    with pytest.raises(ValueError, match="r\\*k = 2\\*2 = 4 is larger than F_low"):
        fine(*_maps(3, 9))
    with pytest.raises(ValueError, match="num_areas <="):
        FINE(C, 8, 16, attention="area", head_dim=8)(*_maps(6, 8))
    with pytest.raises(ValueError, match="no modulation map"):
        FINE(C, 8, 16, modulation="none").modulation_map(low, high)


# -- ERF (Eq. 11-13, Fig. 6) and heatmaps (Fig. 8) ---------------------------------------------------


def test_gaussian_fit_recovers_sigma():
    rows, cols = np.mgrid[0:48, 0:64]
    g = 2.5 * np.exp(-((rows - 20.0) ** 2 + (cols - 37.0) ** 2) / (2 * 6.5**2))
    sigma, (r, c) = fit_gaussian_sigma(g + 1e-4 * np.random.default_rng(0).random(g.shape))
    assert sigma == pytest.approx(6.5, rel=0.01) and (r, c) == pytest.approx((20.0, 37.0), abs=0.05)
    with pytest.raises(ValueError, match="all zero"):
        fit_gaussian_sigma(np.zeros((4, 4)))


class _ConvStages(torch.nn.Module):
    """Four stride-2 conv stages (strides 2-16): ERFs grow with depth, as App. F assumes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        chs = [3, 8, 8, 8, 8]
        self.stages = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(a, b, 3, 2, 1), torch.nn.Conv2d(b, b, 3, 1, 1), torch.nn.ReLU())
            for a, b in zip(chs, chs[1:], strict=False)
        )
        self.feature_info = [dict(chs=8, reduction=2**i, module=f"stages.{i - 1}") for i in range(1, 5)]

    def forward(self, x):
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def test_erf_map_and_stage_sigmas():
    model = _ConvStages()
    image = torch.randn(3, 64, 64)
    g = erf_map(lambda x: model(x)[0], image, (5, 7))
    # The stride-2 unit (5, 7) sees input rows 5 * 2 - 3 .. 5 * 2 + 3 only (two 3x3 convs).
    assert g.shape == (64, 64) and g[7:14, 11:18].sum() == g.sum() > 0
    result = stage_sigmas(model, [image], strides=(2, 4, 8, 16))
    assert len(result["mean_sigma"]) == 4 and all(r > 1.2 for r in result["ratios"])
    with pytest.raises(ValueError, match="not produced by the backbone"):
        stage_sigmas(model, [image], strides=(32,))


def test_sampled_token_erfs_grow_with_r():
    model = _ConvStages()
    result = sampled_token_erfs(model, torch.randn(3, 64, 64), low_stride=4, high_stride=8, ratios=(1, 2, 4))
    assert result["kernel"] == 4 and result["high_token"] == (0, 0)
    sigmas = [fit_gaussian_sigma(result["low"][r])[0] for r in (1, 2, 4)]
    assert sigmas[0] < sigmas[1] < sigmas[2]


def test_heatmaps_and_erf_figures(tmp_path):
    from msfusion.analysis.erf import save_sampled_token_erf_figure

    model = mf.create_model("test_semantic_fpn_fine")
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    maps = capture_fine_maps(model, x)
    assert int(maps["low_stride"]) == 16 and maps["low"].shape == maps["modulation"].shape == maps["aligned"].shape
    torch.testing.assert_close(maps["aligned"], maps["low"] * maps["modulation"] + maps["low"])
    png = save_fine_heatmaps([image], [maps], tmp_path / "heat.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="no FINE module with F_low at stride 4"):
        capture_fine_maps(model, x, low_stride=4)
    with pytest.raises(ValueError, match="contains no FINE"):
        capture_fine_maps(torch.nn.Conv2d(3, 3, 1), x)
    result = sampled_token_erfs(_ConvStages(), torch.randn(3, 32, 32), low_stride=4, high_stride=8)
    assert save_sampled_token_erf_figure(result, tmp_path / "tokens.png").stat().st_size > 1000


def test_cli_erf_and_heatmap(tmp_path):
    import json

    from PIL import Image

    from msfusion.cli import main

    image = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "erf"
    assert main(["erf", "resnet10t", "--image", str(image), "--out", str(out), "--set", "zero_init_last=false"]) == 0
    summary = json.loads((out / "erf_stages.json").read_text())
    assert summary["strides"] == [4, 8, 16, 32] and len(summary["ratios"]) == 3
    assert (out / "erf_stages.png").exists() and (out / "img_erf_tokens.png").exists()
    assert main(["heatmap", "test_semantic_fpn_fine", "--image", str(image), "--out", str(tmp_path / "hm")]) == 0
    assert (tmp_path / "hm" / "fine_heatmaps.png").stat().st_size > 1000
    assert (
        main(["heatmap", "test_semantic_fpn_fine", "--image", str(image), "--out", str(tmp_path), "--low-stride", "4"])
        == 2
    )
