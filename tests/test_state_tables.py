"""What every lifecycle table (channel, peer link, local gate) promises: it is total,
each pair a transition or ``Illegal`` (EPROTO, naming the state and the event), and every
state can be reached from the first."""

from __future__ import annotations

import itertools
from types import ModuleType

import pytest

from nipc import channel_state, gate_state, link_state
from nipc.machine import Illegal


@pytest.mark.parametrize("machine", [channel_state, link_state, gate_state],
                         ids=lambda m: m.__name__)
def test_every_pair_is_a_transition_or_illegal(machine: ModuleType) -> None:
    for state, event in itertools.product(machine.State, machine.Event):
        if (state, event) in machine.TABLE:
            assert machine.step(state, event) == machine.TABLE[state, event]
        else:
            with pytest.raises(Illegal) as raised:
                machine.step(state, event)
            assert raised.value.errno_name == "EPROTO"
            assert state.value in raised.value.message and event.value in raised.value.message
            assert (raised.value.state, raised.value.event) == (state, event)


@pytest.mark.parametrize("machine", [channel_state, link_state, gate_state],
                         ids=lambda m: m.__name__)
def test_every_state_is_reachable_from_the_first(machine: ModuleType) -> None:
    first = next(iter(machine.State))
    seen, todo = {first}, [first]
    while todo:
        state = todo.pop()
        for (old, _), (new, _) in machine.TABLE.items():
            if old is state and new not in seen:
                seen.add(new)
                todo.append(new)
    assert seen == set(machine.State)
