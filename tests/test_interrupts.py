"""``HeldStopSignals``: a stop signal that arrives inside the block reaches the handler from
before only when the block ends."""

from __future__ import annotations

import signal

import pytest

from vvk.interrupts import HeldStopSignals


class Recorder:
    """A handler for SIGINT and SIGTERM that notes each signal with the phase it came in."""

    def __init__(self) -> None:
        self.now = "outside"
        self.log: list[tuple[int, str]] = []

    def __call__(self, signum: int, _frame: object) -> None:
        self.log.append((signum, self.now))


@pytest.fixture
def received():
    recorder = Recorder()
    before = {s: signal.signal(s, recorder) for s in (signal.SIGINT, signal.SIGTERM)}
    yield recorder
    for s, handler in before.items():
        signal.signal(s, handler)


def test_a_signal_inside_waits_for_the_end_of_the_block(received):
    with HeldStopSignals():
        received.now = "inside"
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        assert received.log == []
        received.now = "after"
    assert received.log == [(signal.SIGTERM, "after")]  # the first one: both mean stop
    signal.raise_signal(signal.SIGINT)  # the handler from before is back
    assert received.log[-1] == (signal.SIGINT, "after")


def test_nested_holds_pass_a_signal_outwards_and_a_hold_can_be_entered_again(received):
    hold = HeldStopSignals()
    with hold:
        with HeldStopSignals():
            signal.raise_signal(signal.SIGINT)
        received.now = "between"  # the inner hold's end gave it to the outer one
        assert received.log == []
        received.now = "after"
    with hold:
        pass
    assert received.log == [(signal.SIGINT, "after")]  # once: the second use held nothing


def test_block_masks_the_signals_for_the_processes_spawned_inside(received):
    if not hasattr(signal, "pthread_sigmask"):
        pytest.skip("no signal masks on this platform")
    with HeldStopSignals(block=True):
        masked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert {signal.SIGINT, signal.SIGTERM} <= masked
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_no_exception_inside_is_lost_and_a_held_interrupt_still_comes(received):
    with pytest.raises(ValueError), HeldStopSignals():
        signal.raise_signal(signal.SIGINT)
        raise ValueError
    assert received.log == [(signal.SIGINT, "outside")]


def test_it_steps_aside_where_it_could_not_put_a_handler_back(received, monkeypatch):
    import threading

    errors = []

    def in_a_thread():
        try:
            with HeldStopSignals():  # handlers cannot be set outside the main thread
                pass
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert errors == []
    real = signal.getsignal  # a handler installed from C reads as None
    monkeypatch.setattr(signal, "getsignal", lambda s: None if s == signal.SIGTERM else real(s))
    with HeldStopSignals():
        received.now = "inside"
        signal.raise_signal(signal.SIGINT)
    assert received.log == [(signal.SIGINT, "inside")]
