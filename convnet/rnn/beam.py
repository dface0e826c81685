"""Beam search and greedy decoding over any decoder step net.

The decoder is a :class:`convnet.Net` that reads the previous token (an (N,) blob of ids),
one blob per state (``states={"h": ("h_prev", "h")}``: read ``h_prev``, write ``h``) and any
static blobs (an encoder's outputs, one row per sequence), and writes a score blob (N, V)
(``scores``: logits, or log-probabilities with ``log_probs=True``). Nothing else is assumed:
the decoder may be recurrent or not.

Beam search keeps, per sequence, the ``beam_size`` best hypotheses. Each step scores every
(hypothesis, token) pair as the hypothesis' log-probability plus the token's, keeps the top
``beam_size`` of the K x V candidates (ties broken by the lower index, so beam 1 is greedy
decoding exactly), records a backpointer (index // V) and the token (index % V), and
reorders every decoder state by the backpointers. A hypothesis that emitted ``end_token`` is
finished: it keeps its score and only extends with ``end_token``. At the end hypotheses are
ranked by score / length ** ``length_normalization`` (0: raw log-probability) and each path
is read back through the backpointers.
"""

import numpy as np

from convnet.errors import ConfigError, ShapeError, fail
from convnet.layers.base import check_number


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _check(decoder, states, token_input, scores, initial, static):
    from convnet.net import Net
    if not isinstance(decoder, Net):
        raise ConfigError(f"beam_search: decoder must be a convnet Net, got "
                          f"{type(decoder).__name__}")
    inputs = decoder.inputs
    if token_input not in inputs:
        fail(decoder, f"token_input '{token_input}' is not an input of the decoder (its "
                      f"inputs: {', '.join(inputs)})")
    for s, (prev, nxt) in states.items():
        if prev not in inputs:
            fail(decoder, f"state '{s}' reads '{prev}', which is not an input of the decoder")
        if s not in initial:
            fail(decoder, f"missing the initial value of state '{s}'")
    given = {token_input} | {p for p, _ in states.values()} | set(static)
    missing = [b for b in inputs if b not in given]
    if missing:
        fail(decoder, f"decoder inputs {missing} are neither the token, a state nor a static "
                      f"input (static={{...}})")
    n = {np.shape(v)[0] for v in list(initial.values()) + list(static.values())}
    if len(n) != 1:
        fail(decoder, f"initial states and static inputs disagree on N: {sorted(n)}",
             ShapeError)
    return n.pop()


def _step(decoder, states, token_input, scores, tokens, state_values, static, log_probs):
    feed = {token_input: tokens}
    for s, (prev, _) in states.items():
        feed[prev] = state_values[s]
    feed.update(static)
    decoder.forward(**feed)
    logits = np.asarray(decoder.blobs[scores], dtype=np.float64)
    nxt = {s: decoder.blobs[b] for s, (_, b) in states.items()}
    return (logits if log_probs else _log_softmax(logits)), nxt


def greedy_decode(decoder, states, initial, token_input="token", scores="logits",
                  max_length=20, start_token=0, end_token=1, static=None, log_probs=False):
    """Greedy decoding: the arg-max token at each step (lowest index on ties). Returns
    (tokens (N, L) padded with end_token, lengths (N,) counting the end token, log-probs
    (N,))."""
    static = dict(static or {})
    n = _check(decoder, states, token_input, scores, initial, static)
    values = {s: np.asarray(v) for s, v in initial.items()}
    tokens = np.full(n, start_token, dtype=np.int64)
    out = np.full((n, max_length), end_token, dtype=np.int64)
    done = np.zeros(n, bool)
    lengths = np.zeros(n, np.int64)
    score = np.zeros(n)
    for t in range(max_length):
        logp, values = _step(decoder, states, token_input, scores, tokens, values, static,
                             log_probs)
        tokens = np.argmax(logp, axis=1)
        score += np.where(done, 0.0, logp[np.arange(n), tokens])
        tokens = np.where(done, end_token, tokens)
        out[:, t] = tokens
        lengths += ~done
        done |= tokens == end_token
        if done.all():
            break
    return out, lengths, score


def beam_search(decoder, states, initial, beam_size=5, max_length=20, start_token=0,
                end_token=1, length_normalization=0.0, token_input="token", scores="logits",
                static=None, log_probs=False):
    """Beam search (see the module docstring). Returns (tokens (N, K, L) padded with
    end_token, lengths (N, K) counting the end token, scores (N, K) log-probabilities), the
    hypotheses of each sequence best first."""
    k = check_number(beam_size, "beam_size", "beam_search", minimum=1, integer=True)
    max_length = check_number(max_length, "max_length", "beam_search", minimum=1,
                              integer=True)
    alpha = check_number(length_normalization, "length_normalization", "beam_search",
                         minimum=0.0)
    static = dict(static or {})
    n = _check(decoder, states, token_input, scores, initial, static)
    values = {s: np.repeat(np.asarray(v), k, axis=0) for s, v in initial.items()}
    static_k = {b: np.repeat(np.asarray(v), k, axis=0) for b, v in static.items()}
    beam_score = np.full((n, k), -np.inf)
    beam_score[:, 0] = 0.0
    finished = np.zeros((n, k), bool)
    lengths = np.zeros((n, k), np.int64)
    tokens = np.full(n * k, start_token, dtype=np.int64)
    history_tok, history_bp = [], []
    base = (np.arange(n) * k)[:, None]
    for t in range(max_length):
        logp, nxt = _step(decoder, states, token_input, scores, tokens, values, static_k,
                          log_probs)
        v = logp.shape[1]
        logp = logp.reshape(n, k, v)
        ended = np.full(v, -np.inf)
        ended[end_token] = 0.0
        logp = np.where(finished[:, :, None], ended, logp)
        cand = (beam_score[:, :, None] + logp).reshape(n, k * v)
        order = np.argsort(-cand, axis=1, kind="stable")[:, :k]
        beam_score = np.take_along_axis(cand, order, axis=1)
        bp = order // v
        tok = order % v
        src = (base + bp).reshape(-1)
        values = {s: np.asarray(x)[src] for s, x in nxt.items()}
        was_finished = np.take_along_axis(finished, bp, axis=1)
        lengths = np.take_along_axis(lengths, bp, axis=1) + ~was_finished
        finished = was_finished | (tok == end_token)
        history_tok.append(tok)
        history_bp.append(bp)
        tokens = tok.reshape(-1)
        if finished.all():
            break
    steps = len(history_tok)
    norm = beam_score / np.maximum(lengths, 1) ** alpha if alpha else beam_score
    rank = np.argsort(-norm, axis=1, kind="stable")
    out = np.full((n, k, max_length), end_token, dtype=np.int64)
    idx = rank.copy()
    for t in range(steps - 1, -1, -1):
        out[:, :, t] = np.take_along_axis(history_tok[t], idx, axis=1)
        idx = np.take_along_axis(history_bp[t], idx, axis=1)
    return (out, np.take_along_axis(lengths, rank, axis=1),
            np.take_along_axis(beam_score, rank, axis=1))


def decoder_net(runner, embed, classifier, token_input="token", scores="logits"):
    """A decoder step net for :func:`beam_search` from a trained :class:`CellRunner`: the
    token embedding (an Embed layer), the runner's (hoisted) input projection, its step
    layers and the classifier (an InnerProduct on the cell output), all sharing the trained
    params. Returns (net, states) for ``beam_search(net, states, ...)``."""
    import copy

    from convnet.net import Net
    net = Net(f"{runner.name}_decoder")
    proj = runner.proj
    net.add(copy.copy(embed), bottom=[token_input], top=["emb" if proj else "x_t"])
    if proj is not None:
        net.add(copy.copy(proj), bottom=["emb"], top=["x_t"])
    step = runner.step_net
    for node in step._nodes:
        net.add(copy.copy(node.layer), bottom=[step._versions[b].name for b in node.bottoms],
                top=[step._versions[t].name for t in node.tops])
    net.add(copy.copy(classifier), bottom=[runner.output_blob], top=[scores])
    return net, dict(runner.rnn.states)
