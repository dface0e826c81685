"""LSTM and GRU against torch.nn.LSTM / torch.nn.GRU with copied weights: forward, backward,
multi-layer, and padded batches with lengths (PyTorch's packed sequences)."""

import numpy as np
import pytest

import convnet
from convnet.rnn import GRUCell, LayeredRunner, LSTMCell

torch = pytest.importorskip("torch")


def _caffe_to_torch(w, gates):
    """Caffe's LSTM gate blocks (i, f, o, g) in PyTorch's order (i, f, g, o); GRU as is."""
    if gates == 3:
        return w
    i, f, o, g = np.split(w, 4, axis=0)
    return np.concatenate([i, f, g, o], axis=0)


def _copy_weights(cells, module, gates):
    with torch.no_grad():
        for k, cell in enumerate(cells):
            getattr(module, f"weight_ih_l{k}").copy_(torch.tensor(_caffe_to_torch(
                cell.x2h.params[0].data, gates)))
            getattr(module, f"bias_ih_l{k}").copy_(torch.tensor(_caffe_to_torch(
                cell.x2h.params[1].data, gates)))
            getattr(module, f"weight_hh_l{k}").copy_(torch.tensor(_caffe_to_torch(
                cell.h2h.params[0].data, gates)))
            hb = cell.h2h.params[1].data if gates == 3 else np.zeros(4 * cell.hidden_size)
            getattr(module, f"bias_hh_l{k}").copy_(torch.tensor(_caffe_to_torch(hb, gates)))


def _run_both(kind, dtype, layers, lengths, seed):
    r = np.random.default_rng(seed)
    T, N, I, H = 7, 4, 5, 6
    convnet.seed(seed)
    make = LSTMCell if kind == "lstm" else GRUCell
    cells = [make(I if k == 0 else H, H, name=f"{kind}{k}", dtype=dtype,
                  bias_filler="gaussian") for k in range(layers)]
    runner = LayeredRunner(cells)
    x = r.standard_normal((T, N, I)).astype(dtype)
    states = list(cells[0].state_sizes)
    h0 = {s: r.standard_normal((layers, N, H)).astype(dtype) for s in states}
    initial = [{f"{kind}{k}/{s}": h0[s][k] for s in states} for k in range(layers)]
    y, last = runner.forward(x, initial=initial, lengths=lengths)
    dy = r.standard_normal(y.shape).astype(dtype)
    d_last = [{f"{kind}{k}/{s}": r.standard_normal((N, H)).astype(dtype) for s in states}
              for k in range(layers)]
    g = runner.backward(dy, d_last)

    tdt = torch.float64 if dtype == np.float64 else torch.float32
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H, num_layers=layers)
    module = module.to(tdt)
    gates = 4 if kind == "lstm" else 3
    _copy_weights(cells, module, gates)
    xt = torch.tensor(x, requires_grad=True)
    init_t = [torch.tensor(h0[s], requires_grad=True) for s in states]
    hx = tuple(init_t) if kind == "lstm" else init_t[0]
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                         enforce_sorted=False)
        out, hn = module(packed, hx)
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    else:
        yt, hn = module(xt, hx)
    hn = hn if isinstance(hn, tuple) else (hn,)
    loss = (yt * torch.tensor(dy)).sum()
    for s_i, s in enumerate(states):
        loss = loss + (hn[s_i] * torch.tensor(np.stack([d[f"{kind}{k}/{s}"] for k, d in
                                                         enumerate(d_last)]))).sum()
    loss.backward()
    return dict(runner=runner, cells=cells, y=y, last=last, g=g, yt=yt, hn=hn, xt=xt,
                init_t=init_t, module=module, states=states, kind=kind, layers=layers)


def _check(res, rtol, atol):
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)   # noqa: E731
    kind, layers = res["kind"], res["layers"]
    close(res["y"], res["yt"].detach().numpy())
    for s_i, s in enumerate(res["states"]):
        for k in range(layers):
            close(res["last"][k][f"{kind}{k}/{s}"], res["hn"][s_i][k].detach().numpy())
            close(res["g"]["initial"][k][f"{kind}{k}/{s}"],
                  res["init_t"][s_i].grad.numpy()[k])
    close(res["g"]["x"], res["xt"].grad.numpy())
    gates = 4 if kind == "lstm" else 3
    for k, cell in enumerate(res["cells"]):
        m = res["module"]
        close(_caffe_to_torch(cell.x2h.params[0].diff, gates),
              getattr(m, f"weight_ih_l{k}").grad.numpy())
        close(_caffe_to_torch(cell.h2h.params[0].diff, gates),
              getattr(m, f"weight_hh_l{k}").grad.numpy())
        close(_caffe_to_torch(cell.x2h.params[1].diff, gates),
              getattr(m, f"bias_ih_l{k}").grad.numpy())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layers,lengths", [(1, None), (2, None), (2, [7, 3, 5, 1])])
def test_matches_torch_in_float64(kind, layers, lengths):
    _check(_run_both(kind, np.float64, layers, lengths, seed=layers), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_matches_torch_in_float32(kind):
    _check(_run_both(kind, np.float32, 2, [7, 2, 6, 4], seed=11), rtol=1e-5, atol=1e-5)
