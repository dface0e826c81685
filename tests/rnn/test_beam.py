"""Beam search against an exhaustive search on a small vocabulary, beam 1 against greedy
decoding, length normalisation, a non-recurrent decoder, and bad arguments."""

import itertools

import numpy as np
import pytest

import convnet
from convnet import Net
from convnet.errors import ConfigError
from convnet.layers import Concat, Embed, InnerProduct, TanH
from convnet.rnn import beam_search, greedy_decode

V, END, START = 4, 1, 0


def recurrent_decoder(seed, hidden=5):
    convnet.seed(seed)
    net = Net("dec")
    net.add(Embed(input_dim=V, num_output=3, dtype=np.float64, weight_filler="gaussian",
                  name="emb"), bottom=["token"], top=["e"])
    net.add(Concat(axis=1, dtype=np.float64, name="cat"), bottom=["e", "h_prev"],
            top=["eh"])
    net.add(InnerProduct(num_output=hidden, dtype=np.float64, weight_filler={
        "type": "gaussian", "std": 1.5}, name="ip"), bottom=["eh"], top=["pre"])
    net.add(TanH(dtype=np.float64, name="act"), bottom=["pre"], top=["h"])
    net.add(InnerProduct(num_output=V, dtype=np.float64, weight_filler={
        "type": "gaussian", "std": 1.5}, name="out"), bottom=["h"], top=["logits"])
    return net, {"h": ("h_prev", "h")}


def exhaustive(net, h0, max_length, alpha=0.0):
    """Best (tokens, log-prob) over every sequence that ends at END or at max_length."""
    def logp(prefix):
        h = h0[None]
        tok = np.array([START])
        total = 0.0
        for t in prefix:
            net.forward(token=tok, h_prev=h)
            lg = net.blobs["logits"][0]
            lg = lg - lg.max()
            total += lg[t] - np.log(np.exp(lg).sum())
            h, tok = net.blobs["h"], np.array([t])
        return total

    best = None
    for length in range(1, max_length + 1):
        for body in itertools.product([t for t in range(V) if t != END], repeat=length - 1):
            for last in range(V):
                if length < max_length and last != END:
                    continue
                seq = list(body) + [last]
                score = logp(seq)
                key = score / length ** alpha if alpha else score
                if best is None or key > best[0]:
                    best = (key, seq, score)
    return best[1], best[2]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wide_beam_finds_the_exhaustive_optimum(alpha):
    r = np.random.default_rng(0)
    for seed in range(2):
        net, states = recurrent_decoder(seed)
        h0 = r.standard_normal((2, 5))
        tokens, lengths, scores = beam_search(net, states, {"h": h0}, beam_size=V ** 3,
                                              max_length=3, start_token=START, end_token=END,
                                              length_normalization=alpha)
        for n in range(2):
            want, want_score = exhaustive(net, h0[n], 3, alpha)
            got = list(tokens[n, 0, :lengths[n, 0]])
            assert got == want, (seed, n)
            np.testing.assert_allclose(scores[n, 0], want_score, rtol=1e-12)


def test_beam_one_is_greedy_decoding_exactly():
    r = np.random.default_rng(1)
    for seed in range(4):
        net, states = recurrent_decoder(10 + seed)
        h0 = r.standard_normal((6, 5))
        g, glen, gscore = greedy_decode(net, states, {"h": h0}, max_length=8,
                                        start_token=START, end_token=END)
        b, blen, bscore = beam_search(net, states, {"h": h0}, beam_size=1, max_length=8,
                                      start_token=START, end_token=END)
        np.testing.assert_array_equal(b[:, 0], g)
        np.testing.assert_array_equal(blen[:, 0], glen)
        np.testing.assert_allclose(bscore[:, 0], gscore, rtol=1e-12)


def test_beams_are_sorted_and_never_worse_than_greedy():
    net, states = recurrent_decoder(20)
    h0 = np.random.default_rng(2).standard_normal((5, 5))
    _, _, gscore = greedy_decode(net, states, {"h": h0}, max_length=6, start_token=START,
                                 end_token=END)
    _, _, scores = beam_search(net, states, {"h": h0}, beam_size=4, max_length=6,
                               start_token=START, end_token=END)
    assert np.all(np.diff(scores, axis=1) <= 1e-12)
    assert np.all(scores[:, 0] >= gscore - 1e-12)


def test_a_decoder_without_state_works_and_static_inputs_follow_their_beam():
    """A non-recurrent decoder (a bigram model plus a per-sequence bias as a static input)."""
    convnet.seed(3)
    net = Net("bigram")
    net.add(Embed(input_dim=V, num_output=V, dtype=np.float64, weight_filler="gaussian",
                  name="table"), bottom=["token"], top=["scores0"])
    net.add(Concat(axis=1, dtype=np.float64, name="cat"), bottom=["scores0", "bias"],
            top=["both"])
    net.add(InnerProduct(num_output=V, dtype=np.float64, weight_filler="gaussian",
                         name="mix"), bottom=["both"], top=["logits"])
    bias = np.random.default_rng(4).standard_normal((3, 2))
    b, blen, _ = beam_search(net, {}, {}, beam_size=3, max_length=4, start_token=START,
                             end_token=END, static={"bias": bias})
    g, glen, _ = greedy_decode(net, {}, {}, max_length=4, start_token=START, end_token=END,
                               static={"bias": bias})
    assert b.shape == (3, 3, 4)
    assert np.all(blen >= 1) and np.all(glen >= 1)
    np.testing.assert_array_equal(beam_search(net, {}, {}, beam_size=1, max_length=4,
                                              start_token=START, end_token=END,
                                              static={"bias": bias})[0][:, 0], g)


def test_bad_arguments_are_named():
    net, states = recurrent_decoder(0)
    with pytest.raises(ConfigError, match="beam_search: beam_size must be >= 1"):
        beam_search(net, states, {"h": np.zeros((1, 5))}, beam_size=0)
    with pytest.raises(ConfigError, match="token_input 'tok' is not an input"):
        beam_search(net, states, {"h": np.zeros((1, 5))}, token_input="tok")
    with pytest.raises(ConfigError, match="missing the initial value of state 'h'"):
        beam_search(net, states, {})
