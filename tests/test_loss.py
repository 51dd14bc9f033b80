"""Each loss against a direct computation on small tensors; chunked log-probs against unchunked."""
import dataclasses

import pytest
import torch

import rasft

CFG = rasft.Config()


def batch(n_seq=3, n_tok=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.sort(torch.randint(0, n_seq, (n_tok,), generator=g)).values
    seq[:n_seq] = torch.arange(n_seq)  # every sequence has a token
    seq = torch.sort(seq).values
    return {"seq": seq, "adv": torch.tensor([1.0, 0.3, -0.5])[:n_seq],
            "ref_logp": -torch.rand(n_seq, generator=g) * 2, "kl": torch.rand(n_tok, generator=g)}


def logp_leaf(n_tok=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (-torch.rand(n_tok, generator=g) * 3).requires_grad_()


def grad_of(loss_fn, logp, b, cfg=CFG):
    tok_loss, _ = loss_fn(logp, b, cfg)
    (g,) = torch.autograd.grad(tok_loss.sum(), logp)
    return tok_loss.detach(), g


def test_sft_is_token_nll():
    logp, b = logp_leaf(), batch()
    loss, g = grad_of(rasft.loss_sft, logp, b)
    assert torch.allclose(loss, -logp.detach())
    assert torch.allclose(g, -torch.ones(10))


def test_dft_weights_by_detached_probability():
    logp, b = logp_leaf(), batch()
    loss, g = grad_of(rasft.loss_dft, logp, b)
    p = logp.detach().exp()
    assert torch.allclose(loss, -p * logp.detach())
    assert torch.allclose(g, -p)  # sg[p]: the weight itself is not differentiated


def test_kl_losses_add_the_kl_term():
    logp, b = logp_leaf(), batch()
    loss, _ = grad_of(rasft.loss_sft_kl, logp, b)
    assert torch.allclose(loss, -logp.detach() + CFG.kl_coef * b["kl"])
    loss, _ = grad_of(rasft.loss_asft, logp, b)
    assert torch.allclose(loss, -logp.detach().exp() * logp.detach() + CFG.kl_coef * b["kl"])


def test_profit_keeps_confident_tokens_only():
    logp = torch.log(torch.tensor([0.05, 0.5, 0.09, 0.9])).requires_grad_()
    b = {"seq": torch.zeros(4, dtype=torch.long), "adv": torch.ones(1), "ref_logp": torch.zeros(1), "kl": None}
    loss, g = grad_of(rasft.loss_profit, logp, b)
    assert torch.allclose(g, torch.tensor([0.0, -1.0, 0.0, -1.0]))


def test_rasft_by_hand():
    logp, b = logp_leaf(), batch()
    loss, g = grad_of(rasft.loss_rasft, logp, b)
    lp = logp.detach()
    for i in range(3):
        m = b["seq"] == i
        rho = min(max(float(torch.exp(b["ref_logp"][i] - lp[m].mean())), 0.4), 1.2)
        w = rho * float(b["adv"][i]) * lp[m].exp()
        assert torch.allclose(loss[m], -w * lp[m])
        assert torch.allclose(g[m], -w)


def test_rasft_without_clip_and_unit_advantage_is_dft():
    logp, b = logp_leaf(), batch()
    b["adv"] = torch.ones(3)
    # ratio off -> rho = 1
    off = dataclasses.replace(CFG, ratio_clip=False)
    assert torch.allclose(grad_of(rasft.loss_rasft, logp, b, off)[1], grad_of(rasft.loss_dft, logp, b)[1])
    # ratio on but the policy equals the reference -> rho = 1 inside the clip
    b["ref_logp"] = rasft.seq_mean(logp.detach(), b["seq"], 3)
    assert torch.allclose(grad_of(rasft.loss_rasft, logp, b)[0], grad_of(rasft.loss_dft, logp, b)[0])


def test_rasft_reduces_to_sft_with_the_readme_flags():
    logp, b = logp_leaf(), batch()
    b["adv"] = torch.ones(3)
    plain = dataclasses.replace(CFG, ratio_clip=False, token_weight=False)
    assert torch.equal(grad_of(rasft.loss_rasft, logp, b, plain)[0], grad_of(rasft.loss_sft, logp, b)[0])


def test_ratio_is_clipped():
    logp = torch.full((4,), -1.0, requires_grad=True)
    b = {"seq": torch.tensor([0, 0, 1, 1]), "adv": torch.ones(2), "ref_logp": torch.tensor([-5.0, 3.0])}
    _, st = rasft.loss_rasft(logp, b, CFG)
    loss, g = grad_of(rasft.loss_rasft, logp, b)
    p = torch.exp(torch.tensor(-1.0))
    assert torch.allclose(g, -torch.stack([0.4 * p, 0.4 * p, 1.2 * p, 1.2 * p]))
    assert st["clip"] == 1.0


@pytest.mark.parametrize("kl_dir", [None, "ref_theta", "theta_ref"])
def test_chunked_logp_equals_unchunked(tiny, kl_dir):
    torch.manual_seed(0)
    ref = rasft.frozen_copy(tiny, torch.float32)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 250, (3, 17))
    attn = torch.ones_like(ids)
    attn[2, 12:] = 0
    resp = torch.zeros(3, 16, dtype=torch.bool)
    resp[:, 5:] = True
    resp[2, 11:] = False
    full = rasft.Scorer(tiny, ref, chunk=10_000)
    chunked = rasft.Scorer(tiny, ref, chunk=7)
    a, ka = full(ids, resp, kl_dir=kl_dir)
    ga = torch.autograd.grad(a.sum() + (ka.sum() if kl_dir else 0), tiny.lm_head.weight)[0]
    b, kb = chunked(ids, resp, kl_dir=kl_dir)
    gb = torch.autograd.grad(b.sum() + (kb.sum() if kl_dir else 0), tiny.lm_head.weight)[0]
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(ga, gb, atol=1e-6)
    # against a direct computation from the full logits, with the padding masked (the scorer needs no mask)
    logits = tiny(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    lp = logits.log_softmax(-1)
    direct = lp.gather(-1, ids[:, 1:, None]).squeeze(-1)[resp]
    assert torch.allclose(a, direct, atol=1e-5)
    if kl_dir:
        r = ref(input_ids=ids, attention_mask=attn).logits[:, :-1].float().log_softmax(-1)
        kl = (r.exp() * (r - lp)).sum(-1) if kl_dir == "ref_theta" else (lp.exp() * (lp - r)).sum(-1)
        assert torch.allclose(ka, kl[resp], atol=1e-5)
        assert (ka > 0).all()
