"""Every parameter of every architecture: the layer rows against a float64 recompute from copied gradients.

For each model, one training step after a warm-up step is checked against an independent oracle: its own
forward hooks count the calls of every leaf and capture the gradient of each call's primary output, and the
gradients and weights are copied right before the optimizer step (and the weights right after it).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

import pytest
import torch
import torchvision
from torch import nn

import diagnostics as dx
from tests.conftest import hook_state

REL = 1e-4


def is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def primary(out):
    """The oracle's own choice of a module's primary output (see the monitor's README rule)."""
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, Mapping):
        for key in ("logits", "last_hidden_state"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        items = list(out.values())
    elif isinstance(out, (tuple, list)):
        items = list(out)
    else:
        return None
    for item in items:
        if isinstance(item, torch.Tensor) and item.is_floating_point() and item.dim() > 0:
            return item
        if isinstance(item, (tuple, list, Mapping)):
            found = primary(item)
            if found is not None and found.dim() > 0:
                return found
    return None


class Oracle:
    """Counts leaf calls in forward order and sums the squares of each call's primary-output gradient."""

    def __init__(self, model: nn.Module) -> None:
        self.root = type(model).__name__
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in model.named_modules()
                        if is_leaf(m)]
        self.reset()

    def reset(self) -> None:
        self.calls: Counter[str] = Counter()
        self.first: dict[str, int] = {}
        self.out_sq: dict[str, float] = defaultdict(float)

    def _hook(self, name: str) -> Callable:
        label = name or self.root

        def hook(module, inputs, output):
            if not torch.is_grad_enabled():
                return
            self.calls[label] += 1
            self.first.setdefault(label, len(self.first))
            out = primary(output)
            if out is not None and out.requires_grad:
                def grad_hook(g):
                    self.out_sq[label] += float(g.detach().double().pow(2).sum())
                out.register_hook(grad_hook)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def dense64(t: torch.Tensor) -> torch.Tensor:
    return (t.to_dense() if t.is_sparse else t).detach().double().clone()


def expected_rows(model, ran, grads, before, after, held):
    """The rows the monitor must write, recomputed in float64 from copies."""
    root = type(model).__name__
    first_owner: dict[int, str] = {}
    rows = {}
    for name, module in model.named_modules():
        label = name or root
        mine, shared = [], []
        for attr, p in module.named_parameters(recurse=False):
            if id(p) in first_owner:
                shared.append(p)
                continue
            first_owner[id(p)] = label
            mine.append((attr, p))
        leaf_ran = is_leaf(module) and label in ran
        if not (leaf_ran or any(id(p) in grads for _, p in mine) or any(id(p) in grads for p in shared)):
            continue
        weights = [p for a, p in mine if not a.startswith("bias")]
        biases = [p for a, p in mine if a.startswith("bias")]

        def norm(ps):
            with_grad = [grads[id(p)] for p in ps if id(p) in grads]
            return math.sqrt(sum(float(g.pow(2).sum()) for g in with_grad)) if with_grad else math.nan
        w_norm = math.sqrt(sum(float(before[id(p)].pow(2).sum()) for p in weights)) if weights else math.nan
        moved = [p for p in weights if id(p) in grads and id(p) in held]
        update = (math.sqrt(sum(float((after[id(p)] - before[id(p)]).pow(2).sum()) for p in moved)) / w_norm
                  if moved and w_norm > 0 else math.nan)
        rows[label] = {"weight_grad_norm": norm(weights), "bias_grad_norm": norm(biases), "weight_norm": w_norm,
                       "update_ratio": update, "kind": "leaf" if leaf_ran else "owner",
                       "shared_with": first_owner[id(shared[0])] if shared else ""}
    return rows


def close(actual: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return math.isclose(actual, expected, rel_tol=REL, abs_tol=1e-12)


def run_and_check(model: nn.Module, batch: Callable[[], tuple], loss_fn: Callable, *, sparse: bool = False):
    """Two monitored SGD steps; the second is checked row by row, column by column."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before_hooks = hook_state(model)
    oracle = Oracle(model)
    with dx.GradientMonitor(model, optimizer=opt) as mon:
        for _ in range(2):
            oracle.reset()
            inputs = batch()
            loss = loss_fn(model, inputs)
            loss.backward()
            mon.step(loss=loss)
            grads = {id(p): dense64(p.grad) for p in model.parameters() if p.grad is not None}
            before = {id(p): dense64(p) for p in model.parameters()}
            opt.step()
            after = {id(p): dense64(p) for p in model.parameters()}
            opt.zero_grad(set_to_none=True)
    oracle.remove()
    assert hook_state(model) == before_hooks                       # the monitor left nothing behind
    frame = mon.frame()
    last = frame[frame.step == 1].set_index("layer")
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    want = expected_rows(model, set(oracle.calls), grads, before, after, held)
    assert set(last.index) == set(want)
    for label, cols in want.items():
        row = last.loc[label]
        for col, value in cols.items():
            if isinstance(value, str):
                assert row[col] == value, (label, col)
            else:
                assert close(float(row[col]), value), (label, col, float(row[col]), value)
        if cols["kind"] == "leaf":
            assert row["calls"] == oracle.calls[label], label
            if label in oracle.out_sq:
                assert close(float(row["act_grad_norm"]), math.sqrt(oracle.out_sq[label])), label
    # The layer view accounts for the whole gradient.
    total = last["grad_norm_total"].iloc[0]
    parts = (last["weight_grad_norm"].fillna(0) ** 2 + last["bias_grad_norm"].fillna(0) ** 2).sum()
    assert math.isclose(parts, total**2, rel_tol=REL)
    assert math.isclose(total, math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values())), rel_tol=REL)
    # Leaves in the order they first ran; depth is a rank that does not change between steps.
    leaves = last[last.kind == "leaf"].sort_values("depth")
    assert list(leaves.index) == sorted(leaves.index, key=oracle.first.__getitem__)
    assert last["depth"].is_unique
    first_step = frame[frame.step == 0].set_index("layer")["depth"]
    assert all(first_step[n] == d for n, d in last["depth"].items() if n in first_step)
    # One param row per parameter with a gradient, shared ones once.
    params = mon.param_frame()
    p1 = params[params.step == 1]
    assert p1["param"].is_unique
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(p1["param"]) == {names[i] for i in grads}
    by_name = dict(zip(p1["param"], p1["grad_norm"]))
    for pid, g in grads.items():
        assert close(by_name[names[pid]], float(g.pow(2).sum().sqrt()))
    return frame, mon


def classify(model, inputs):
    x, y = inputs
    return nn.functional.cross_entropy(model(x), y)


def images(n, c, size, classes):
    return lambda: (torch.randn(n, c, size, size), torch.randint(0, classes, (n,)))


# --- torchvision ---------------------------------------------------------------------------------------------

def test_vision_transformer_every_parameter_has_a_row():
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=5)
    frame, _ = run_and_check(model, images(2, 3, 32, 5), classify)
    last = frame[frame.step == 1].set_index("layer")
    assert last.loc["encoder.layers.encoder_layer_0.self_attention", "kind"] == "owner"       # in_proj_weight
    assert last.loc["encoder", "kind"] == "owner"                                           # pos_embedding
    assert last.loc["VisionTransformer", "kind"] == "owner"                                 # class_token
    assert last.loc["encoder.layers.encoder_layer_0.self_attention.out_proj", "calls"] == 0  # F.linear


def test_swin_t_every_parameter_has_a_row():
    model = torchvision.models.swin_t(num_classes=4)
    run_and_check(model, images(1, 3, 64, 4), classify)


def test_convnext_tiny_every_parameter_has_a_row():
    model = torchvision.models.convnext_tiny(num_classes=4)
    frame, _ = run_and_check(model, images(1, 3, 64, 4), classify)
    last = frame[frame.step == 1].set_index("layer")
    assert last.loc["features.1.0", "kind"] == "owner"                  # CNBlock.layer_scale


# --- torch.nn sequence models -----------------------------------------------------------------------------------

def test_transformer_encoder_attention_has_rows():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False), nn.Flatten(),
                          nn.Linear(16 * 5, 3))
    frame, _ = run_and_check(model, lambda: (torch.randn(4, 5, 16), torch.randint(0, 3, (4,))), classify)
    last = frame[frame.step == 1].set_index("layer")
    attn = "0.layers.0.self_attn"
    assert last.loc[attn, "kind"] == "owner" and last.loc[attn, "weight_grad_norm"] > 0
    # out_proj never runs as a module: ranked with its attention, before the layer's first leaf that ran.
    assert last.loc[attn, "depth"] < last.loc[f"{attn}.out_proj", "depth"] < last.loc["0.layers.0.linear1", "depth"]


class LanguageModel(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], vocab: int = 20) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.rnn = cell(8, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, vocab)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


def lm_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_recurrent_weights_are_one_group(cell):
    model = LanguageModel(cell)
    frame, _ = run_and_check(model, lambda: torch.randint(0, 20, (3, 7)), lm_loss)
    rnn = frame[(frame.step == 1) & (frame.layer == "rnn")].iloc[0]
    assert rnn["weight_grad_norm"] > 0 and rnn["update_ratio"] > 0 and rnn["bias_grad_norm"] > 0


class SparseModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 6, sparse=True)
        self.bag = nn.EmbeddingBag(50, 6, mode="mean", sparse=True)
        self.head = nn.Linear(12, 3)

    def forward(self, tokens):
        return self.head(torch.cat([self.embed(tokens).mean(1), self.bag(tokens)], dim=1))


@pytest.mark.parametrize("reductions_path", ["fused", "pytorch"])
def test_sparse_gradients_are_recorded_over_their_values(reductions_path, monkeypatch):
    from diagnostics.recording import native

    if reductions_path == "pytorch":
        monkeypatch.setenv("DIAGNOSTICS_NATIVE", "0")
    native.reset()
    try:
        model = SparseModel()
        frame, mon = run_and_check(model, lambda: (torch.randint(0, 50, (4, 5)), torch.randint(0, 3, (4,))),
                                   classify)
    finally:
        native.reset()
    params = mon.param_frame()
    embed = params[(params.step == 1) & (params.param == "embed.weight")].iloc[0]
    assert embed["numel"] == 300                                   # mean |g| over the dense element count


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.relu(self.shared(torch.relu(self.shared(x)))))


def test_a_module_called_twice_counts_two_calls():
    frame, _ = run_and_check(Twice(), lambda: (torch.randn(4, 6), torch.randint(0, 2, (4,))), classify)
    assert frame[(frame.step == 1) & (frame.layer == "shared")]["calls"].iloc[0] == 2


class TensorAndDict(nn.Module):
    def forward(self, x):
        return x * 2, {"aux": x.sum(), "scale": torch.ones(())}


class WithAux(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.both = TensorAndDict()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y, extra = self.both(self.fc(x))
        return self.head(y) + 0 * extra["aux"]


def test_a_module_returning_a_tensor_and_a_dict_uses_the_tensor():
    frame, _ = run_and_check(WithAux(), lambda: (torch.randn(3, 4), torch.randint(0, 2, (3,))), classify)
    both = frame[(frame.step == 1) & (frame.layer == "both")].iloc[0]
    assert both["calls"] == 1 and both["act_grad_norm"] > 0


# --- Hugging Face transformers, from small configs ----------------------------------------------------------------

def test_gpt2_tied_head_is_counted_once():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    tokens = lambda: torch.randint(0, 64, (2, 8))                                       # noqa: E731
    frame, _ = run_and_check(model, tokens, lambda m, t: m(input_ids=t, labels=t).loss)
    head = frame[(frame.step == 1) & (frame.layer == "lm_head")].iloc[0]
    assert head["shared_with"] == "transformer.wte" and math.isnan(head["weight_grad_norm"])
    assert head["kind"] == "leaf" and head["act_grad_norm"] > 0


def test_bert_every_parameter_has_a_row():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    model = transformers.BertForMaskedLM(config)
    tokens = lambda: torch.randint(0, 64, (2, 8))                                       # noqa: E731
    run_and_check(model, tokens, lambda m, t: m(input_ids=t, labels=t).loss)
