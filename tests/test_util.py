"""moehooks.util: the leaf helpers (offloaded tensors read back through accelerate, layer spans, option checks)."""

from __future__ import annotations

import pytest
import torch
from accelerate import cpu_offload
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from moehooks import runs
from moehooks.util import UsageError, check_choice, layer_span, module_tensor, span


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 2)))


def test_module_tensor_reads_what_cpu_offload_moved_to_meta():
    """Oracle: the weights as they were before accelerate replaced them with ``meta`` tensors."""
    net = _net()
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    cpu_offload(net, execution_device=torch.device("cpu"))
    assert net[1][0].weight.device.type == "meta"
    for name, tensor in before.items():
        assert torch.equal(module_tensor(net, name), tensor)
    assert torch.equal(module_tensor(net[1][0], "bias"), before["1.0.bias"])


def test_module_tensor_finds_a_hook_on_an_ancestor_and_inside_a_sequential_hook():
    """``place_submodules``: one hook on the outer block holds its submodules' weights, keyed relative to it; a
    second hook appended to it makes a ``SequentialHook``."""
    net = _net()
    before = net[1][0].weight.clone()
    weights = {name: tensor.clone() for name, tensor in net[1].state_dict().items()}
    add_hook_to_module(net[1], AlignDevicesHook(torch.device("cpu"), offload=True, weights_map=weights,
                                                place_submodules=True))
    add_hook_to_module(net[1], AlignDevicesHook(), append=True)
    assert type(net[1]._hf_hook).__name__ == "SequentialHook" and net[1][0].weight.device.type == "meta"
    assert torch.equal(module_tensor(net, "1.0.weight"), before)
    assert torch.equal(module_tensor(net[1], "0.weight"), before)


def test_module_tensor_refuses_meta_without_a_hook():
    with torch.device("meta"):
        bare = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"Linear\.weight is on the meta device"):
        module_tensor(bare, "weight")


@pytest.mark.parametrize(("ids", "text"), [([0, 1, 2, 3], "0-3"), ([5, 3, 4], "3-5"), ([1, 2], "1-2"), ([7], "7"),
                                           ([1, 5, 7], "1, 5, 7"), ([], "")])
def test_span_by_hand(ids, text):
    assert span(ids) == text


@given(st.sets(st.integers(0, 60), min_size=1, max_size=12))
def test_span_names_exactly_the_ids(ids):
    """Oracle: reading the text back (``a-b`` inclusive, comma lists) gives the same set."""
    text = span(list(ids))
    read: set[int] = set()
    for part in text.split(", "):
        first, _, last = part.partition("-")
        read.update(range(int(first), int(last or first) + 1))
    assert read == ids


def test_layer_span_is_inclusive():
    assert layer_span((2, 4)) == [2, 3, 4]
    assert layer_span([6, 6]) == [6]
    assert runs.parse_layers("2-4") == [2, 3, 4]


def test_check_choice_is_one_usage_error_for_library_and_command_line():
    assert check_choice("mode", "soft", ("soft", "hard")) == "soft"
    with pytest.raises(UsageError, match=r"^unknown mode 'sharp'; allowed: soft, hard$") as err:
        check_choice("mode", "sharp", ("soft", "hard"))
    assert isinstance(err.value, ValueError) and runs.UsageError is UsageError and runs.check_choice is check_choice
