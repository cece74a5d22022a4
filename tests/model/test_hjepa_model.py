"""The H-JEPA stack: target path, every level training, top-down causality, masked pooling, options."""
from __future__ import annotations

import pytest
import torch

from hjepa_fast.config import ConfigError
from hjepa_fast.model.abstraction import build_abstraction
from hjepa_fast.model.loss_weighting import LossWeighting
from hjepa_fast.model.predictor import Predictor
from hjepa_fast.model.topdown import fill_predicted
from hjepa_fast.train.builders import build_mask_sampler, build_model


def batch(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (B, cfg.data.frames, 1, cfg.model.img_size, cfg.model.img_size),
                          dtype=torch.uint8, generator=g)
    return clips, build_mask_sampler(cfg).sample(B, g)


@pytest.mark.parametrize("abstraction", ["average", "conv", "attention"])
@pytest.mark.parametrize("topdown", ["none", "cross", "film", "prepend"])
def test_every_online_part_trains_and_the_target_path_gets_no_gradient(make_config, abstraction, topdown):
    cfg = make_config(f"model.abstraction={abstraction}", f"model.topdown={topdown}")
    model = build_model(cfg)
    clips, masks = batch(cfg)
    assert not any(t.requires_grad for t in model.encode_targets(clips))
    out = model(clips, masks)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and len(out.level_losses) == 3
    out.loss.backward()
    assert all(p.grad is None for p in model.target_encoders.parameters())
    assert all(not p.requires_grad for p in model.target_encoders.parameters())
    for level, (encoder, predictor) in enumerate(zip(model.encoders, model.predictors)):
        for name, p in [*encoder.named_parameters(), *predictor.named_parameters()]:
            if name == "tokenizer.empty" or name.startswith("td_null"):
                continue  # used only where a window or a coarse step is empty
            if topdown == "film" and name.startswith("td_proj"):
                continue  # FiLM starts as the identity (zero-initialised), so td_proj waits one step
            assert p.grad is not None and p.grad.abs().sum() > 0, f"level {level + 1}: {name} gets no gradient"


def test_target_encoders_start_as_copies_of_the_online_encoders(make_config):
    model = build_model(make_config())
    for t, s in zip(model.target_encoders.parameters(), model.encoders.parameters()):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr()


@pytest.mark.parametrize("mode", ["cross", "film", "prepend"])
def test_topdown_for_time_t_uses_only_coarse_steps_that_ended_before_t(mode):
    """A level-l token at time t reads coarse step tau of the level above only if tau < t // window.
    One block: with more, self-attention passes reads between tokens (see the Predictor docstring);
    FiLM acts after the blocks and stays exact at any depth, so it gets three."""
    torch.manual_seed(0)
    grid, window, S = (4, 2, 2), 2, 2
    depth = 3 if mode == "film" else 1
    pred = Predictor(enc_dim=8, dim=8, depth=depth, heads=2, grid=grid, topdown=mode, topdown_dim=6, window=window)
    if mode == "film":
        torch.nn.init.normal_(pred.film.weight)  # leave the identity start, or no gradient flows
    ctx_idx = torch.tensor([[0, 1, 2, 3]])  # time step 0 (4 tokens per step)
    tgt_idx = torch.arange(4, 16).unsqueeze(0)  # time steps 1, 2, 3
    summary = torch.randn(1, S, 6, requires_grad=True)
    out = pred(torch.randn(1, 4, 8), ctx_idx, tgt_idx, topdown=(summary, torch.ones(1, S, dtype=torch.bool)))
    for j, idx in enumerate(tgt_idx[0].tolist()):
        t = idx // 4
        (grad,) = torch.autograd.grad(out[0, j].sum(), summary, retain_graph=True)
        allowed = grad[0].abs().sum(-1) > 0
        for tau in range(S):
            if tau >= t // window:
                assert not allowed[tau], f"{mode}: token at t={t} reads coarse step {tau}"
        if mode != "film" and t // window > 0:
            assert allowed[: t // window].all()
        if mode == "film" and t // window > 0:
            assert allowed[t // window - 1]  # FiLM reads the most recent allowed step


@pytest.mark.parametrize("mode", ["cross", "film", "prepend"])
def test_a_predicted_coarse_step_is_read_up_to_the_tokens_own_window(mode):
    """Coarse step 0 is context (read iff 0 < t // window), steps 1-2 are the level above's predictions
    (read iff tau <= t // window): a token reads the prediction of its own window, never a later one."""
    torch.manual_seed(0)
    grid, window, S = (6, 2, 2), 2, 3
    depth = 3 if mode == "film" else 1
    pred = Predictor(enc_dim=8, dim=8, depth=depth, heads=2, grid=grid, topdown=mode, topdown_dim=6, window=window)
    if mode == "film":
        torch.nn.init.normal_(pred.film.weight)
    ctx_idx, tgt_idx = torch.tensor([[0, 1, 2, 3]]), torch.arange(4, 24).unsqueeze(0)  # steps 0 | 1..5
    summary = torch.randn(1, S, 6, requires_grad=True)
    valid, predicted = torch.tensor([[True, False, False]]), torch.tensor([[False, True, True]])
    out = pred(torch.randn(1, 4, 8), ctx_idx, tgt_idx, topdown=(summary, valid | predicted, predicted))
    for j, idx in enumerate(tgt_idx[0].tolist()):
        t = idx // 4
        (grad,) = torch.autograd.grad(out[0, j].sum(), summary, retain_graph=True)
        read = (grad[0].abs().sum(-1) > 0).tolist()
        allowed = [0 < t // window, 1 <= t // window, 2 <= t // window]
        if mode == "film":  # FiLM reads only the most recent allowed step
            latest = max(tau for tau in range(S) if allowed[tau]) if any(allowed) else None
            allowed = [tau == latest for tau in range(S)]
        assert read == allowed, f"{mode}: token at t={t} reads {read}, allowed {allowed}"


@pytest.mark.parametrize("mode", ["cross", "prepend"])
def test_token_keys_are_read_by_their_coarse_step(mode):
    """Two keys per coarse step: key k belongs to step k // 2 and follows that step's causal rule."""
    torch.manual_seed(0)
    grid, window, S, per_step = (4, 2, 2), 2, 2, 2
    pred = Predictor(enc_dim=8, dim=8, depth=1, heads=2, grid=grid, topdown=mode, topdown_dim=6, window=window,
                     keys_per_step=per_step)
    ctx_idx, tgt_idx = torch.tensor([[0, 1, 2, 3]]), torch.arange(4, 16).unsqueeze(0)
    keys = torch.randn(1, S * per_step, 6, requires_grad=True)
    out = pred(torch.randn(1, 4, 8), ctx_idx, tgt_idx, topdown=(keys, torch.ones(1, S * per_step, dtype=torch.bool)))
    for j, idx in enumerate(tgt_idx[0].tolist()):
        t = idx // 4
        (grad,) = torch.autograd.grad(out[0, j].sum(), keys, retain_graph=True)
        read = (grad[0].abs().sum(-1) > 0).tolist()
        assert read == [k // per_step < t // window for k in range(S * per_step)], f"t={t}: {read}"


def test_token_keys_refuse_film(make_config):
    with pytest.raises(ConfigError, match="topdown_keys=token needs model.topdown=cross or prepend"):
        make_config("model.topdown_keys=token", "model.topdown=film")
    with pytest.raises(ValueError, match="film"):
        Predictor(enc_dim=8, dim=8, depth=1, heads=2, grid=(4, 2, 2), topdown="film", topdown_dim=6, keys_per_step=4)


def test_fill_predicted_keeps_context_steps_and_fills_the_others_with_the_detached_prediction_mean():
    summary, valid = torch.zeros(1, 3, 2), torch.tensor([[True, False, False]])
    pred = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [7.0, 7.0]]], requires_grad=True)
    pred_idx = torch.tensor([[0, 4, 5]])  # 4 tokens per step: steps 0, 1, 1
    out, out_valid, predicted = fill_predicted(summary, valid, pred, pred_idx, tokens_per_key=4)
    assert torch.equal(out[0, 0], torch.zeros(2))  # a context step keeps the context
    assert torch.equal(out[0, 1], torch.tensor([5.0, 6.0]))  # the mean of its predicted tokens
    assert torch.equal(out[0, 2], torch.zeros(2))  # neither: stays empty and invalid
    assert out_valid.tolist() == [[True, True, False]] and predicted.tolist() == [[False, True, False]]
    assert not out.requires_grad


@pytest.mark.parametrize("source", ["context", "prediction"])
def test_topdown_source_prediction_hands_the_level_above_prediction_down(make_config, source):
    """With ``prediction`` level 1's output changes with level 2's predictor, and level 1's loss sends it
    no gradient; with ``context`` level 2's predictor does not reach level 1 at all."""
    cfg = make_config("masks.strategies=[future,future,future]", f"model.topdown_source={source}")
    model = build_model(cfg)
    clips, masks = batch(cfg)
    context = model.encode_context(clips, masks)
    before = model.predict(context, masks)[0]
    assert torch.equal(before, model.predict_level(0, context, masks))  # computed alone, the same
    grads = torch.autograd.grad(before.sum(), list(model.predictors[1].parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    with torch.no_grad():
        model.predictors[1].head.bias.add_(1.0)
    after = model.predict(context, masks)[0]
    assert (not torch.equal(before, after)) == (source == "prediction")


def test_a_rollout_feeds_each_predicted_step_back_as_context(make_config, monkeypatch):
    """``loss.rollout_steps=3`` at level 1 (4 future steps): passes predict step c, then c + 1 with step c's
    prediction in the context, then the rest; ``rollout_steps=1`` is the one-pass prediction."""
    cfg = make_config("masks.strategies=[future,future,future]", "loss.rollout_steps=[3,1,1]")
    model = build_model(cfg)
    clips, masks = batch(cfg)
    context = model.encode_context(clips, masks)
    one_pass = model.predict_level(1, context, masks)
    calls, predict_level = [], model.predict_level

    def record(level, context, masks, actions=None, target=None, above_prediction=None):
        out = predict_level(level, context, masks, actions, target, above_prediction)
        calls.append((level, context[level], masks[level].context, target, out))
        return out

    monkeypatch.setattr(model, "predict_level", record)
    preds = model.predict(context, masks)
    assert torch.equal(preds[1], one_pass)  # rollout_steps=1: one pass
    passes = [c for c in calls if c[0] == 0]
    hw, target = 9, masks[0].target
    assert [p[3].shape[1] for p in passes] == [hw, hw, target.shape[1] - 2 * hw]
    assert torch.equal(torch.cat([p[3] for p in passes], 1), target)
    for before, after in zip(passes, passes[1:]):  # the context grows by the previous pass's prediction
        assert torch.equal(after[1], torch.cat([before[1], before[4]], 1))
        assert torch.equal(after[2], torch.cat([before[2], before[3]], 1))
    assert torch.equal(preds[0], torch.cat([p[4] for p in passes], 1))
    (grad,) = torch.autograd.grad(passes[2][4].sum(), passes[0][4])  # the loss trains through the rollout
    assert grad.abs().sum() > 0


def test_a_rollout_needs_future_masks(make_config):
    with pytest.raises(ConfigError, match=r"loss.rollout_steps\[0\] = 2 needs masks.strategies\[0\] = future"):
        make_config("loss.rollout_steps=[2,0,0]", "masks.strategies=[multiblock,future,future]")


@pytest.mark.parametrize("kind", ["average", "conv", "attention"])
def test_masked_pool_ignores_hidden_steps_and_marks_empty_windows(kind):
    torch.manual_seed(0)
    pool = build_abstraction(kind, 6, 8, window=2, heads=2)
    with torch.no_grad():
        pool.empty.normal_()
    x = torch.randn(1, 4, 3, 6, requires_grad=True)
    visible = torch.ones(1, 4, 3, dtype=torch.bool)
    visible[0, 0, 0] = False  # window 0, token 0: half hidden
    visible[0, 2:, 1] = False  # window 1, token 1: all hidden
    out = pool(x, visible)
    assert out.shape == (1, 2, 3, 8)
    assert torch.equal(out[0, 1, 1], pool.empty.detach())
    (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)  # a plain sum is flat under LayerNorm
    assert grad[0, 0, 0].abs().max() == 0 and grad[0, 2:, 1].abs().max() == 0
    assert grad[0, 1, 0].abs().max() > 0


def test_actions_condition_the_predictions(make_config):
    cfg = make_config("model.action_dim=3")
    model = build_model(cfg)
    clips, masks = batch(cfg)
    actions = torch.randn(2, cfg.data.frames, 3, requires_grad=True)
    preds = model.predict(model.encode_context(clips, masks), masks, actions)
    for level, pred in enumerate(preds):
        (grad,) = torch.autograd.grad(pred.pow(2).sum(), actions, retain_graph=True)
        assert grad.abs().max() > 0, f"level {level + 1} ignores the actions"
    with pytest.raises(ValueError, match="action"):
        model(clips, masks)


def test_bad_clips_are_refused_with_the_expected_shape(make_config):
    cfg = make_config()
    model = build_model(cfg)
    _, masks = batch(cfg)
    with pytest.raises(ValueError, match=r"clips must be \[B, 16, 1, 24, 24\]"):
        model(torch.zeros(2, 8, 1, 24, 24, dtype=torch.uint8), masks)
    with pytest.raises(ValueError, match="masks for 2 levels"):
        model(torch.zeros(2, 16, 1, 24, 24, dtype=torch.uint8), masks[:2])


def test_loss_weightings():
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)]
    assert LossWeighting(3, "uniform")(losses, 0).item() == pytest.approx(7 / 3)
    assert LossWeighting(3, "increasing").weights(0) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    curriculum = LossWeighting(3, "curriculum", curriculum_steps=10)
    assert curriculum.weights(0) == pytest.approx([1 / 3, 0, 0])
    assert curriculum.weights(15) == pytest.approx([1 / 3, 1 / 3, 1 / 6])
    assert curriculum.weights(100) == pytest.approx([1 / 3] * 3)
    learned = LossWeighting(3, "uncertainty")
    learned(losses, 0).backward()
    # d/ds (exp(-s) L + s) at s=0 is 1 - L: the weight of a large loss shrinks
    assert learned.log_vars.grad.tolist() == pytest.approx([0.0, -1 / 3, -1.0])
    with pytest.raises(ValueError, match="unknown loss weighting"):
        LossWeighting(3, "bogus")

