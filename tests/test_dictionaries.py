"""Transcoders, crosscoders, cross-layer transcoders and Matryoshka SAEs against dense
formulas written out here (dense codes, dense decoders, torch autograd): forward, every loss
term and every gradient; then training from a model through SAETrainer (one forward pass
that stops at the last hook needed, checkpoints, exact resume, dead latents, progress)."""
from __future__ import annotations

import pytest
import torch

from pyinterp.sae import (
    Crosscoder,
    CrossLayerTranscoder,
    MatryoshkaBatchTopKSAE,
    MatryoshkaTopKSAE,
    SAETrainer,
    TrainConfig,
    Transcoder,
    needed_hooks,
)
from sae_testing import one_thread  # noqa: F401  (autouse: one torch thread)

ACTS = ["relu", "topk", "batchtopk", "jumprelu"]


def _randomise(mod, seed=0, skip=("input_scale", "output_scale")):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name in skip:
            if hasattr(mod, name):
                b = getattr(mod, name)
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return mod


def _dense_act(act, pre, k, threshold, training=True):
    """The dense code of one encoder (N, d_sae), differentiable like the sparse one (no STE:
    the tests compare gradients of everything but the threshold)."""
    if act == "relu":
        return pre.relu()
    if act == "topk":
        v, i = torch.topk(pre, k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, i, v.relu())
    if act == "batchtopk":
        flat = pre.relu().reshape(-1)
        v, i = torch.topk(flat, k * pre.shape[0])
        return torch.zeros_like(flat).scatter(0, i, v).reshape(pre.shape)
    return pre * (pre > threshold).to(pre.dtype)


def _kw(act):
    return dict(k=3) if act in ("topk", "batchtopk") else {}


def _check_grads(mod, loss_ours, loss_ref, names):
    named = []  # a crosscoder's W_dec is a ParameterList: one parameter per layer
    for n in names:
        p = getattr(mod, n)
        named += [(f"{n}[{i}]", q) for i, q in enumerate(p)] \
            if isinstance(p, torch.nn.ParameterList) else [(n, p)]
    params = [p for _, p in named]
    ours = torch.autograd.grad(loss_ours, params, retain_graph=True)
    ref = torch.autograd.grad(loss_ref, params, allow_unused=True)
    for (n, _), a, b in zip(named, ours, ref):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, atol=2e-5,
                                   rtol=2e-4, msg=n)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_matches_dense(act, skip):
    tc = _randomise(Transcoder(7, 24, activation=act, d_out=5, skip=skip, **_kw(act)))
    x, y = torch.randn(11, 7), torch.randn(11, 5)
    xn, yn = x * tc.input_scale, y * tc.output_scale
    pre = xn @ tc.W_enc + tc.b_enc
    thr = getattr(tc, "threshold", None)
    code = _dense_act(act, pre, tc.cfg.k, thr)
    y_ref = code @ tc.W_dec + tc.b_dec + (xn @ tc.W_skip.T if skip else 0)
    res = tc.train().loss(x, y)
    mse = (y_ref - yn).pow(2).sum(-1).mean()
    torch.testing.assert_close(res.mse, mse)
    if act == "relu":
        torch.testing.assert_close(res.sparsity, tc.cfg.l1_coefficient *
                                   (code * tc.W_dec.norm(dim=1)).sum(-1).mean())
    if act == "jumprelu":
        torch.testing.assert_close(res.sparsity, (pre > thr).sum(-1).float().mean())
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["W_skip"] if skip else [])
    _check_grads(tc, res.mse, mse, names)
    if act != "batchtopk":  # inference BatchTopK uses its learned threshold instead
        torch.testing.assert_close(tc.eval()(x), (code.detach().relu() @ tc.W_dec + tc.b_dec +
                                                  (xn @ tc.W_skip.T if skip else 0)).detach()
                                   / tc.output_scale, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ACTS)
def test_crosscoder_matches_dense(act):
    cc = _randomise(Crosscoder(3, 6, 20, activation=act, apply_b_dec_to_input=True, **_kw(act)))
    xs = [torch.randn(9, 6) for _ in range(3)]
    xn = torch.stack(xs) * cc.input_scale[:, None, None]
    pre = sum((xn[l] - cc.b_dec[l]) @ cc.W_enc[l] for l in range(3)) + cc.b_enc
    code = _dense_act(act, pre, cc.cfg.k, getattr(cc, "threshold", None))
    recon = torch.stack([code @ cc.W_dec[l] + cc.b_dec[l] for l in range(3)])
    res = cc.train().loss(*xs)
    mse = (recon - xn).pow(2).sum(-1).sum(0).mean()
    torch.testing.assert_close(res.mse, mse)
    if act == "relu":
        norms = torch.stack(list(cc.W_dec)).norm(dim=2).sum(0)
        torch.testing.assert_close(res.sparsity, cc.cfg.l1_coefficient * (code * norms).sum(-1).mean())
    _check_grads(cc, res.mse, mse, ["W_enc", "b_enc", "W_dec", "b_dec"])
    assert cc(xs).shape == (3, 9, 6)


def _stacked_crosscoder_loss(cc, xs, dead_mask, backend):
    """A crosscoder loss (apply_b_dec_to_input=True) in the former layout: the L decoders as
    one (L, d_sae, d) tensor decoded by one L-output multi_decode, their norms from it."""
    from pyinterp.ops.multi_decode import multi_decode
    from pyinterp.ops.sae import topk_encode
    from pyinterp.sae import activations as A
    from pyinterp.sae.dictionary import squared_error

    xn = cc._stack(xs, cc.d_in, cc.input_scale, "xs", rows_major=True)
    code = cc._code(xn)
    W = torch.stack(list(cc.W_dec))
    x_hat = multi_decode(code.values, code.indices, W, cc.b_dec, backend=backend)
    loss = squared_error(xn, x_hat) + cc._sparsity_one(code, W.norm(dim=2).sum(0), 1.0)
    if dead_mask is not None:
        L, n, d = xn.shape
        bias = cc.b_enc + A.dead_bias(dead_mask, cc.b_enc.dtype)
        enc = lambda kk: topk_encode(xn.permute(1, 0, 2).reshape(n, L * d),  # noqa: E731
                                     cc.W_enc.reshape(L * d, -1), bias, cc.b_dec.reshape(-1), kk)
        loss = loss + A.auxk_loss(xn, x_hat, dead_mask, k_aux=cc.cfg.effective_aux_k,
                                  coefficient=cc.cfg.aux_coefficient, encode_dead=enc,
                                  decode=lambda v, i: multi_decode(v, i, W, None, backend=backend))
    return loss, x_hat


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("act", ACTS + ["topk_aux"])
def test_crosscoder_per_layer_decoders_match_the_stacked_layout(act, backend):
    """The per-layer decoders compute what one stacked decoder computed (forward bit for bit
    on the same kernel; every gradient), AuxK included."""
    aux = act == "topk_aux"
    act = "topk" if aux else act
    cc = _randomise(Crosscoder(3, 6, 20, activation=act, apply_b_dec_to_input=True,
                               **_kw(act))).train()
    xs = [torch.randn(9, 6) for _ in range(3)]
    dead = torch.arange(20) % 3 == 0 if aux else None
    res = cc.loss(*xs, dead_mask=dead)
    ref, x_hat = _stacked_crosscoder_loss(cc, xs, dead, backend)
    if backend == "cpu":
        assert torch.equal(res.x_hat, x_hat.detach())
    torch.testing.assert_close(res.x_hat, x_hat.detach())
    torch.testing.assert_close(res.total, ref)
    _check_grads(cc, res.total, ref, ["W_enc", "b_enc", "W_dec", "b_dec"])


def test_crosscoder_backward_forms_one_decoder_gradient_at_a_time():
    """What makes a crosscoder step small with the optimizer in backward: each layer's
    decoder gradient is complete (and can be consumed) before any other layer's is formed,
    sparsity norms included."""
    for act in ("relu", "topk"):
        cc = _randomise(Crosscoder(3, 6, 20, activation=act, **_kw(act))).train()
        res = cc.loss(*[torch.randn(9, 6) for _ in range(3)])
        layer = {id(w): l for l, w in enumerate(cc.W_dec)}
        events = []

        def producer(node, l):  # a node whose backward hands W_dec[l] a gradient
            node.register_hook(lambda gi, go: events.append(("formed", l)))

        seen, todo = set(), [res.total.grad_fn]
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            for nxt, _ in node.next_functions:
                var = getattr(nxt, "variable", None)
                if var is not None and id(var) in layer:
                    producer(node, layer[id(var)])
                todo.append(nxt)
        for l, w in enumerate(cc.W_dec):
            w.register_post_accumulate_grad_hook(lambda p, l=l: events.append(("complete", l)))
        res.total.backward()
        pending = set()
        for kind, l in events:
            if kind == "formed":
                assert not pending - {l}, (act, events)
                pending.add(l)
            else:
                pending.discard(l)
        formed = [l for kind, l in events if kind == "formed"]
        assert sorted(set(formed)) == [0, 1, 2] and len(formed) == (6 if act == "relu" else 3)
        assert [e for e in events if e[0] == "complete"] == [("complete", l) for l in (2, 1, 0)]


@pytest.mark.parametrize("act", ACTS)
def test_clt_matches_dense(act):
    L = 3
    clt = _randomise(CrossLayerTranscoder(L, 6, 10, activation=act, d_out=4, **_kw(act)))
    xs = [torch.randn(8, 6) for _ in range(L)]
    ys = [torch.randn(8, 4) for _ in range(L)]
    xn = torch.stack(xs) * clt.input_scale[:, None, None]
    yn = torch.stack(ys) * clt.output_scale[:, None, None]
    thr = getattr(clt, "threshold", None)
    codes = [_dense_act(act, xn[l] @ clt.W_enc[l] + clt.b_enc[l], clt.cfg.k,
                        thr[l] if thr is not None and thr.dim() else thr) for l in range(L)]
    recon = torch.stack([sum(codes[l] @ clt.decoder(l, j) for l in range(j + 1)) + clt.b_dec[j]
                         for j in range(L)])
    res = clt.train().loss(*xs, *ys)
    mse = (recon - yn).pow(2).sum(-1).sum(0).mean()
    torch.testing.assert_close(res.mse, mse)
    if act == "relu":
        norms = [sum(clt.decoder(l, j).norm(dim=1) for j in range(l, L)) for l in range(L)]
        l1 = sum((codes[l] * norms[l]).sum(-1) for l in range(L)).mean()
        torch.testing.assert_close(res.sparsity, clt.cfg.l1_coefficient * l1)
    _check_grads(clt, res.mse, mse, ["W_enc", "b_enc", "W_dec", "b_dec"])
    # the circuit-tracing API: per-layer codes, per-pair contributions, the weights
    clt.eval()
    if act != "batchtopk":
        v, i = clt.encode_layer(1, xs[1])
        part = clt.contribution(1, 2, v, i)
        ref = (codes[1].detach().relu() @ clt.decoder(1, 2)).detach() / clt.output_scale[2]
        torch.testing.assert_close(part, ref, atol=1e-5, rtol=1e-5)
        gv, gi = clt.encode(xs)
        torch.testing.assert_close(clt.decode(gv, gi, outputs=[2]), clt(xs)[2:], atol=1e-5, rtol=1e-5)
    assert clt.decoders_from(1).shape == (2, 10, 4) and clt.n_latents == 30


@pytest.mark.parametrize("cls", [MatryoshkaTopKSAE, MatryoshkaBatchTopKSAE])
def test_matryoshka_matches_dense(cls):
    widths = [3, 8, 20]
    sae = _randomise(cls(6, 20, k=4, matryoshka_widths=widths))
    x = torch.randn(10, 6)
    xn = x * sae.input_scale
    pre = (xn - sae.b_dec) @ sae.W_enc + sae.b_enc
    code = _dense_act("topk" if cls is MatryoshkaTopKSAE else "batchtopk", pre, 4, None)
    outs = [code[:, :m] @ sae.W_dec[:m] + sae.b_dec for m in widths]
    res = sae.train().loss(x)
    torch.testing.assert_close(res.mse, (outs[-1] - xn).pow(2).sum(-1).mean())
    prefix = sum((o - xn).pow(2).sum(-1).mean() for o in outs[:-1])
    torch.testing.assert_close(res.extra["prefix_mse"], prefix)
    total = sum((o - xn).pow(2).sum(-1).mean() for o in outs)
    _check_grads(sae, res.total, total, ["W_enc", "b_enc", "W_dec", "b_dec"])


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="activation"):
        Transcoder(4, 8, activation="gelu")
    with pytest.raises(ValueError, match="apply_b_dec_to_input"):
        Transcoder(4, 8, apply_b_dec_to_input=True)
    with pytest.raises(ValueError, match="n_layers"):
        Crosscoder(0, 4, 8)
    with pytest.raises(ValueError, match="hook_names must list 2"):
        CrossLayerTranscoder(2, 4, 8, hook_names=["a"])
    with pytest.raises(ValueError, match="matryoshka_widths"):
        MatryoshkaTopKSAE(4, 8, k=2, matryoshka_widths=[4, 6])
    with pytest.raises(ValueError, match="target_l0"):
        Transcoder(4, 8, activation="jumprelu", sparsity_loss="quadratic")
    with pytest.raises(ValueError, match="skip"):
        Crosscoder(2, 4, 8, skip=True)
    tc = Transcoder(4, 8)
    with pytest.raises(ValueError, match="y must have shape"):
        tc.loss(torch.randn(3, 4), torch.randn(3, 5))


# ------------------------------------------------------------------------------------------
# training from a model


def _model():
    from pyinterp.models import Transformer, TransformerConfig

    torch.manual_seed(0)
    return Transformer(TransformerConfig(n_layers=3, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                                         d_vocab=40, n_ctx=12)).eval()


def _tokens(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 40, (4, 12), generator=g) for _ in range(n)]


def _zoo():
    mlp_in = [f"blocks.{i}.ln2.hook_normalized" for i in range(2)]
    mlp_out = [f"blocks.{i}.hook_mlp_out" for i in range(2)]
    return {
        "tc": Transcoder(16, 32, activation="topk", k=4, skip=True, hook_name=mlp_in[0],
                         hook_name_out=mlp_out[0], seed=0),
        "cc": Crosscoder(2, 16, 32, activation="relu", l1_coefficient=0.5, seed=0,
                         hook_names=[f"blocks.{i}.hook_resid_post" for i in range(2)]),
        "clt": CrossLayerTranscoder(2, 16, 16, activation="jumprelu", init_l0=4.0, seed=0,
                                    hook_names=mlp_in, hook_names_out=mlp_out),
        "mat": MatryoshkaBatchTopKSAE(16, 32, k=4, matryoshka_widths=[8, 32], seed=0,
                                      hook_name="blocks.0.hook_resid_post"),
    }


def test_one_forward_pass_stops_at_the_last_hook_needed():
    from pyinterp.sae.store import activation_fn

    model = _model()
    hooks = needed_hooks(_zoo())
    assert hooks[0] == "blocks.0.ln2.hook_normalized" and "blocks.2.hook_mlp_out" not in hooks
    ran = []
    model.blocks[2].register_forward_pre_hook(lambda m, a: ran.append(2))
    model.blocks[1].register_forward_pre_hook(lambda m, a: ran.append(1))
    acts = activation_fn(model, hooks)(_tokens(1)[0])
    assert set(acts) == set(hooks) and ran == [1]      # block 2 never ran
    _, cache = model.run_with_cache(_tokens(1)[0], names_filter=hooks)
    for h in hooks:
        torch.testing.assert_close(acts[h], cache[h].reshape(-1, 16))


def test_zoo_trains_from_a_model_and_resumes_exactly(tmp_path):
    from pyinterp.sae.store import ActivationStore, collect

    model = _model()
    zoo = _zoo()
    hooks = needed_hooks(zoo)
    collect(tmp_path / "acts", model, _tokens(12), hook_names=hooks, shard_rows=96,
            progress=False)

    def run(saes, root, stop=None, resume=False):
        store = ActivationStore(tmp_path / "acts", batch_size=32, hook_names=hooks, seed=1)
        if resume:
            tr = SAETrainer.resume(root, store)
        else:
            tr = SAETrainer(saes, store, TrainConfig(steps=6, lr=1e-3, progress=False,
                                                      log_every=2, checkpoint_every=3,
                                                      checkpoint_dir=str(root),
                                                      dead_window_tokens=64, aux_check_every=2))
        tr.run(stop)
        return tr

    full = run(zoo, tmp_path / "a")
    run(_zoo(), tmp_path / "b", stop=4)          # interrupted after step 4 (checkpoint at 3, 4)
    resumed = run(None, tmp_path / "b", resume=True)
    for name in zoo:
        a, b = full.saes[name].state_dict(), resumed.saes[name].state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    rec = full.history[-1]
    assert len(rec["cc"]["fvu_per_output"]) == 2 and len(rec["clt"]["fvu_per_output"]) == 2
    assert rec["mat"]["prefix_mse"] > 0 and rec["tc"]["l0"] <= 4
    assert full.since_fired["clt"].shape == (32,)


# ------------------------------------------------------------------------------------------
# evaluation


def test_evaluate_every_kind_against_direct_formulas():
    from pyinterp.sae import metrics
    from pyinterp.sae.store import activation_fn

    model = _model()
    zoo = _zoo()
    fn = activation_fn(model, needed_hooks(zoo))
    batches = [fn(t) for t in _tokens(3, seed=5)]
    for name, d in zoo.items():
        d.initialise(tuple(torch.cat(p) for p in zip(*[
            tuple(b[h] for h in d.input_hooks() + d.target_hooks()) for b in batches])),
            True, "mean")
        ev = metrics.evaluate(d, batches)
        tgt = d.target_hooks() or d.input_hooks()
        ys = torch.stack([torch.cat([b[h] for b in batches]) for h in tgt]).double()
        ins = [torch.cat([b[h] for b in batches]) for h in d.input_hooks()]
        d.eval()
        if len(d.input_hooks() + d.target_hooks()) == 1:
            pred = d(ins[0]).unsqueeze(0)
        elif isinstance(d, Transcoder):
            pred = d(ins[0]).unsqueeze(0)
        else:
            pred = d(ins)
        num = (ys - pred.detach().double()).pow(2).sum((1, 2))
        den = (ys - ys.mean(1, keepdim=True)).pow(2).sum((1, 2))
        assert ev["fvu"] == pytest.approx(float(num.sum() / den.sum()), rel=1e-5), name
        if ys.shape[0] > 1:
            assert ev["fvu_per_output"] == pytest.approx((num / den).tolist(), rel=1e-5)
        assert 0 <= ev["dead_fraction"] <= 1 and ev["density"].shape == (d.n_latents,)
    assert len(metrics.evaluate(zoo["clt"], batches)["l0_per_layer"]) == 2


@pytest.mark.parametrize("name", ["tc", "cc", "clt", "mat"])
def test_loss_recovered_by_splicing(name):
    from pyinterp.sae import splice

    model = _model()
    d = _zoo()[name].eval()
    toks = _tokens(2, seed=9)
    res = splice.loss_recovered(model, toks, d)
    assert set(res) == {"clean", "zero_ablation", "spliced", "loss_recovered"}
    assert res["spliced"] != pytest.approx(res["clean"], abs=1e-6)
    exact = splice.loss_recovered(model, toks, d, errors=True)  # error terms: the clean model
    assert exact["spliced"] == pytest.approx(exact["clean"], abs=1e-5)
    assert exact["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    if name == "clt":  # the spliced run really uses the CLT at every target layer
        hooks = splice.replacement_hooks(d, model=model)
        _, cache = model.run_with_cache(toks[0], names_filter=d.needed_hooks())
        with model.hooks(hooks):
            _, spliced = model.run_with_cache(toks[0], names_filter=d.target_hooks())
        torch.testing.assert_close(spliced["blocks.0.hook_mlp_out"],
                                   d([cache[h] for h in d.input_hooks()])[0], atol=1e-5, rtol=1e-5)
