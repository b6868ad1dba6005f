"""HPCM model: published structure, coding invariants, entropy model (tiny flavour on the CPU)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from phase1.entropy import CoderTables, GeneralizedGaussian, RansStreamReader, gg_cdf, rans_encode
from phase1.hpcm import build_hpcm, canonical_name, load_hpcm_state_dict
from phase1.hpcm_context import context_layout
from phase1.layers import CrossAttentionCell

MANIFESTS = Path(__file__).resolve().parents[2] / "phase1" / "manifests"


def make_tiny(seed: int = 0):
    """Tiny HPCM whose latents span many symbols (random init alone gives mostly zeros)."""
    torch.manual_seed(seed)
    model = build_hpcm("tiny").eval()
    with torch.no_grad():
        model.g_a.branch[-1].weight.mul_(20)
        model.means_hyper.normal_(0, 0.5)
        for g in model.adaptive_params_list:
            g.uniform_(0.5, 1.5)
    model.update()
    return model


@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (smooth + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


# ---------------------------------------------------------------------- structure


@pytest.mark.parametrize("name, count", [("hpcm_base", 68_505_299), ("hpcm_large", 89_718_803)])
def test_parameter_counts_match_the_published_models(name, count):
    with torch.device("meta"):
        model = build_hpcm(name)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("name", ["hpcm_base", "hpcm_large"])
def test_state_dict_names_and_shapes_match_the_official_manifest(name):
    rows = [line.split("\t") for line in (MANIFESTS / f"{name}.tsv").read_text().splitlines()]
    official = {r[0]: (tuple(int(d) for d in r[1].split(",")), r[2]) for r in rows if not r[0].startswith("#")}
    with torch.device("meta"):
        model = build_hpcm(name)
    params = dict(model.named_parameters())
    ours = {k: (tuple(v.shape), "param" if k in params else "buffer") for k, v in model.state_dict().items()}
    assert ours == official


def test_tiny_has_the_same_names_as_base():
    with torch.device("meta"):
        assert build_hpcm("tiny").state_dict().keys() == build_hpcm("hpcm_base").state_dict().keys()


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown HPCM model 'hpcm_huge'"):
        build_hpcm("hpcm_huge")
    assert canonical_name("HPCM_Large") == "hpcm_large" and canonical_name("base") == "hpcm_base"


def test_official_style_state_dict_loads_with_prefix_and_without_step_gains(tiny):
    official = {f"module.{k}": v.clone() for k, v in build_hpcm("tiny").state_dict().items()}
    official = {k: v for k, v in official.items() if ".adaptive_params_list." not in k}
    model = make_tiny(seed=1)
    notes = load_hpcm_state_dict(model, official)
    assert any("step gains" in n for n in notes) and any("update()" in n for n in notes)
    assert all(torch.equal(g, torch.ones_like(g)) for g in model.adaptive_params_list)
    assert torch.equal(model.g_a.branch[0].weight, official["module.g_a.branch.0.weight"])
    assert model.quantized_cdf_y.numel() == 0  # tables of a training checkpoint are empty


def test_saved_coding_tables_are_resized_on_load_and_used(tiny):
    fresh = build_hpcm("tiny").eval()
    fresh.load_state_dict(tiny.state_dict())
    assert fresh.quantized_cdf_y.shape == tiny.quantized_cdf_y.shape
    x = _image(64, 64)
    assert fresh.compress(x)["strings"] == tiny.compress(x)["strings"]


# ---------------------------------------------------------------------- forward


def test_latent_shapes_follow_the_downsampling(tiny):
    x = _image(333, 500)  # padded to 512 x 512
    out = tiny(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, tiny.config.M, 512 // 16, 512 // 16)
    assert out["likelihoods"]["z"].shape == (1, tiny.config.N, 512 // 64, 512 // 64)
    y = tiny.g_a(torch.zeros(2, 3, 256, 768))
    assert y.shape == (2, tiny.config.M, 16, 48) and tiny.h_a(y).shape == (2, tiny.config.N, 4, 12)


def test_every_parameter_gets_a_gradient_in_training():
    model = build_hpcm("tiny").train()
    x = _image(256, 256)
    out = model(x)
    bpp = sum(lk.log2().sum() for lk in out["likelihoods"].values()) / (-x.numel() / 3)
    (bpp + 100 * (out["x_hat"] - x).pow(2).mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_training_uses_noise_for_rates_and_ste_rounding_for_reconstruction():
    model = build_hpcm("tiny").train()
    x = _image(256, 256)
    a, b = model(x), model(x)
    assert torch.equal(a["x_hat"], b["x_hat"])  # the synthesis path sees rounded latents
    assert not torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])  # rates see uniform noise


def test_one_tiny_training_step_on_256_crop_is_well_under_a_second():
    torch.manual_seed(0)
    model = build_hpcm("tiny").train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = _image(256, 256)
    times = []
    for _ in range(5):  # the fastest of a few: other processes may share the 2 cores
        t = time.perf_counter()
        out = model(x)
        bpp = sum(lk.log2().sum() for lk in out["likelihoods"].values()) / (-256 * 256)
        loss = bpp + 100 * (out["x_hat"] - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    assert min(times) < 1.0, times


# ---------------------------------------------------------------------- coding


@pytest.mark.parametrize("size", [(333, 500), (256, 256), (64, 48), (300, 257)])
def test_decompress_of_compress_equals_the_eval_forward_exactly(tiny, size):
    x = _image(*size, seed=size[0])
    ref = tiny(x)["x_hat"].clamp(0, 1)
    enc = tiny.compress(x)
    assert enc["shape"] == tuple(-(-s // 256) * 4 for s in size)
    dec = tiny.decompress(**enc)["x_hat"]
    assert dec.shape == x.shape
    assert torch.equal(dec, ref)


def test_batched_compress_gives_one_stream_per_image(tiny):
    x = torch.cat([_image(64, 96, seed=1), _image(64, 96, seed=2)])
    enc = tiny.compress(x)
    assert len(enc["strings"][0]) == len(enc["strings"][1]) == 2
    single = tiny.compress(x[1:])
    assert enc["strings"][0][1] == single["strings"][0][0]
    ref = torch.cat([tiny(x[i : i + 1])["x_hat"] for i in range(2)]).clamp(0, 1)  # as decoded: one at a time
    assert torch.equal(tiny.decompress(**enc)["x_hat"], ref)


def test_decoding_with_other_weights_is_detected_by_the_checksum(tiny):
    enc = tiny.compress(_image(64, 64))
    other = make_tiny(seed=3)
    with pytest.raises(RuntimeError, match="do not match the encoder's"):
        other.decompress(**enc)


def test_compress_before_update_is_a_clear_error():
    model = build_hpcm("tiny").eval()
    with pytest.raises(RuntimeError, match=r"call model.update\(\)"):
        model.compress(_image(64, 64))
    assert model.update() is True
    assert model.update() is False
    assert model.update(force=True) is True


def test_bad_input_shapes_are_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        tiny(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="float images"):
        tiny(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_truncated_stream_is_refused():
    with pytest.raises(ValueError, match="truncated"):
        RansStreamReader(b"\x00" * 6, CoderTables([[0, 65536]], [2], [0]))


# ---------------------------------------------------------------------- entropy model


def test_out_of_table_symbols_are_escape_coded_not_clipped():
    gg = GeneralizedGaussian()
    cdf, lengths, offsets = gg.cdf_tables(torch.tensor([0.12, 1.0, 8.0]))
    tables = CoderTables.from_tensors(cdf, lengths, offsets)
    rng = np.random.default_rng(0)
    symbols = np.concatenate([rng.integers(-3, 4, 500), [1000, -1000, 70000, -70000, 37, -38]]).astype(np.int32)
    indexes = rng.integers(0, 3, len(symbols)).astype(np.int32)
    stream = rans_encode(symbols, indexes, tables)
    assert np.array_equal(RansStreamReader(stream, tables).read(indexes), symbols)


def test_cdf_tables_are_valid_rans_tables():
    cdf, lengths, offsets = GeneralizedGaussian().cdf_tables(torch.tensor([0.05, 0.12, 1.0, 64.0]))
    assert lengths[0] == lengths[1]  # scales below the bound use the bound
    for row, n, off in zip(cdf, lengths, offsets):
        r = row[:n]
        assert r[0] == 0 and r[-1] == 1 << 16 and bool((r[1:] > r[:-1]).all())
        assert off == -(n - 3) // 2  # symmetric support -c..c plus the escape bin


def test_gg_likelihood_matches_scipy_and_sums_to_one():
    gg = GeneralizedGaussian().double()
    k = torch.arange(-60, 61, dtype=torch.float64)
    for scale in (0.3, 1.0, 7.0):
        lik = gg(k, torch.full_like(k, scale))
        ref = scipy.stats.gennorm.cdf((k + 0.5) / scale, 1.5) - scipy.stats.gennorm.cdf((k - 0.5) / scale, 1.5)
        assert np.allclose(lik.numpy(), np.maximum(ref, 1e-9), rtol=1e-9, atol=1e-12)
        assert math.isclose(float(lik.sum()), 1.0, rel_tol=1e-6)


def test_gg_cdf_gradient_is_the_density():
    t = torch.tensor([-3.0, -0.7, 0.0, 0.2, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: gg_cdf(u, 1.5), (t,))


# ---------------------------------------------------------------------- context schedule and attention


def test_the_11_steps_partition_the_latent():
    C, H, W = 16, 16, 32
    L = context_layout(C, H, W, "cpu")
    sizes = [len(s[1]) for s in L.steps]
    assert sizes == [C * H * W // 32] * 2 + [C * H * W // 16] * 3 + [C * H * W // 8] * 6
    everything = torch.sort(torch.cat([s[1] for s in L.steps])).values
    assert torch.equal(everything, torch.arange(C * H * W))
    assert torch.equal(L.s1_from_y, torch.gather(L.s2_in_y, 1, L.s1_in_s2))
    # s1 cells of s2 start from the s1 context, the others from the hyperprior (a permutation of y cells)
    from_ctx = L.ctx_s2[:C] >= H * W
    assert int(from_ctx.sum()) == C * (H // 4) * (W // 4)
    hyper = L.ctx_s2[:C][~from_ctx].view(C, -1)
    assert all(len(set(row.tolist())) == row.numel() for row in hyper)


def test_cross_attention_equals_a_naive_windowed_attention():
    torch.manual_seed(0)
    cell = CrossAttentionCell(16, window=4, heads=4)
    x, h = torch.randn(2, 16, 8, 12), torch.randn(2, 16, 8, 12)
    q, k, v = cell.conv_q(x), cell.conv_k(h), cell.conv_v(h)
    ref = torch.zeros_like(x)
    for b in range(2):
        for i in range(0, 8, 4):
            for j in range(0, 12, 4):
                for head in range(4):
                    ch = slice(4 * head, 4 * head + 4)
                    qq = q[b, ch, i : i + 4, j : j + 4].reshape(4, 16).T  # (tokens, d)
                    kk = k[b, ch, i : i + 4, j : j + 4].reshape(4, 16).T
                    vv = v[b, ch, i : i + 4, j : j + 4].reshape(4, 16).T
                    att = torch.softmax(qq @ kk.T / 2.0, -1) @ vv
                    ref[b, ch, i : i + 4, j : j + 4] = att.T.reshape(4, 4, 4)
    assert torch.allclose(cell(x, h), ref + cell.conv_out(x), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_with_graphs_equals_eager_forward():
    model = make_tiny().cuda()
    x = _image(333, 500).cuda()
    ref = model(x)["x_hat"].clamp(0, 1)
    for _ in range(2):  # the second call replays recorded graphs
        enc = model.compress(x)
        assert torch.equal(model.decompress(**enc)["x_hat"], ref)


def test_module_conversions_work_and_move_everything():
    model = build_hpcm("tiny").eval().to(torch.float64)  # nn.Module.to must reach every parameter and buffer
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(_image(64, 64).double())["x_hat"].dtype == torch.float64


def test_new_coding_tables_or_a_move_drop_the_cuda_graphs():
    """Recorded CUDA graphs replay on the addresses of the tensors they saw: update() (new tables, e.g. at
    every in-training evaluation) and .to() must drop them, or the next stream is coded with freed memory."""
    model = make_tiny()
    model.update(force=True)
    model._graphs = object()  # stands for a recorded runner (recording needs a GPU: the gpu tests do it)
    model.update(force=True)
    assert model._graphs is None
    model._graphs = object()
    model.to(torch.float64).to(torch.float32)
    assert model._graphs is None
