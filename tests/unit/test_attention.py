"""Every attention backend equals the dense boolean-mask reference."""

import math

import pytest
import torch

from dlm.errors import ConfigError
from dlm.nn.attention import attention, causal_mask, padding_mask_to_attn_mask

CPU_BACKENDS = ["sdpa", "dense", "auto"]


def _qkv(B=2, Hq=4, Hkv=2, L=6, S=6, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, Hq, L, D, generator=g),
        torch.randn(B, Hkv, S, D, generator=g),
        torch.randn(B, Hkv, S, D, generator=g),
    )


def _naive(q, k, v, allowed):
    """Loop-free but explicit: repeat kv heads, masked softmax in float64."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1).double(), v.repeat_interleave(n_rep, 1).double()
    scores = q.double() @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1).nan_to_num(0.0) @ v).float()


def _padding():
    pad = torch.ones(2, 6, dtype=torch.long)
    pad[1, :2] = 0  # left padding in the second sequence
    return pad


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("Hkv", [4, 2, 1])
def test_backends_equal_dense(backend, mode, padded, Hkv):
    q, k, v = _qkv(Hkv=Hkv)
    mask = padding_mask_to_attn_mask(_padding()) if padded else None
    ref = attention(q, k, v, mode=mode, attn_mask=mask, backend="dense")
    out = attention(q, k, v, mode=mode, attn_mask=mask, backend=backend)
    assert out.shape == q.shape
    assert torch.allclose(out, ref, atol=1e-5)
    allowed = torch.ones(6, 6, dtype=torch.bool) if mode == "bidirectional" else causal_mask(6, 6)
    if mask is not None:
        allowed = allowed & mask
    assert torch.allclose(ref, _naive(q, k, v, allowed), atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gqa_equals_explicit_repeated_kv(backend):
    q, k, v = _qkv(Hq=6, Hkv=2)
    gqa = attention(q, k, v, mode="bidirectional", backend=backend)
    full = attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), mode="bidirectional", backend="dense"
    )
    assert torch.allclose(gqa, full, atol=1e-5)
    # query head h reads kv head h // 3 (Llama convention)
    one = attention(q[:, 4:5], k[:, 1:2], v[:, 1:2], mode="bidirectional", backend="dense")
    assert torch.allclose(gqa[:, 4:5], one, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_causal_independent_of_future(backend):
    q, k, v = _qkv(Hkv=4)
    out = attention(q, k, v, mode="causal", backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 3.0
    v2[:, :, 4:] -= 5.0
    out2 = attention(q, k2, v2, mode="causal", backend=backend)
    assert torch.allclose(out[:, :, :4], out2[:, :, :4], atol=1e-6)
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:], atol=1e-3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bidirectional_depends_on_future(backend):
    q, k, v = _qkv(Hkv=4)
    out = attention(q, k, v, mode="bidirectional", backend=backend)
    v2 = v.clone()
    v2[:, :, 5:] += 1.0
    out2 = attention(q, k, v2, mode="bidirectional", backend=backend)
    assert not torch.allclose(out[:, :, 0], out2[:, :, 0], atol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fully_masked_rows_are_zero_not_nan(backend):
    q, k, v = _qkv()
    pad = _padding()
    pad[0] = 0  # an all-pad sequence
    out = attention(q, k, v, mode="causal", attn_mask=padding_mask_to_attn_mask(pad), backend=backend)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, :, :2] == 0).all()  # pad queries with no real key


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_causal_with_shorter_query_is_bottom_right_aligned(backend):
    q, k, v = _qkv(L=6, S=6)
    full = attention(q, k, v, mode="causal", backend="dense")
    tail = attention(q[:, :, 4:], k, v, mode="causal", backend=backend)  # last two queries vs all keys
    assert torch.allclose(tail, full[:, :, 4:], atol=1e-5)


def test_block_mask_combines_with_mode():
    q, k, v = _qkv()
    block = torch.zeros(6, 6, dtype=torch.bool)
    block[:3, :3] = block[3:, :] = True  # block-causal, block size 3
    ref = attention(q, k, v, mode="bidirectional", attn_mask=block, backend="dense")
    assert torch.allclose(
        attention(q, k, v, mode="bidirectional", attn_mask=block, backend="sdpa"), ref, atol=1e-5
    )
    assert torch.allclose(ref, _naive(q, k, v, block), atol=1e-5)


def test_flash_on_cpu_or_with_mask_is_a_config_error():
    q, k, v = _qkv()
    with pytest.raises(ConfigError, match="attn_backend='flash'"):
        attention(q, k, v, mode="causal", backend="flash")
    with pytest.raises(ConfigError, match="attn_backend"):
        attention(q, k, v, mode="causal", backend="Flash")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="n_kv_heads"):
        q4, k3, v3 = _qkv(Hq=4, Hkv=3)
        attention(q4, k3, v3, mode="causal")


def test_padding_mask_shape():
    m = padding_mask_to_attn_mask(torch.tensor([[1, 1, 0]]))
    assert m.dtype == torch.bool and m.shape == (1, 1, 1, 3) and m.tolist() == [[[[True, True, False]]]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_gpu_backends_equal_dense(mode):
    q, k, v = (x.cuda().bfloat16() for x in _qkv(L=64, S=64, D=64))
    ref = attention(q, k, v, mode=mode, backend="dense").float()
    for backend in ["sdpa", "auto"] + (["flash"] if _flash_ok() else []):
        assert torch.allclose(attention(q, k, v, mode=mode, backend=backend).float(), ref, atol=2e-2)


def _flash_ok() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None
