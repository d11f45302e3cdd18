"""The sweep driver keeps its long-lived heap out of Python's full garbage collections (issue 20:
collections that walked the start-up heap stalled Tune's event loop for 0.5-1 s), and gives it
back at the session's end. No Ray is started here."""

import gc

import pytest

from sweeps import ray_session as session


class Held:
    """A GC-tracked object, as the driver's heap is made of."""


def tracked(obj) -> bool:
    """Whether a collection walks `obj` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


@pytest.fixture(autouse=True)
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_the_session_freezes_what_exists_and_collects_what_comes_after():
    before = Held()
    with session.frozen_heap():
        assert gc.get_freeze_count() > 0
        assert not tracked(before)  # frozen: a full collection does not walk it
        after = Held()
        assert tracked(after)  # what the sweep makes is collected as before
    assert gc.get_freeze_count() == 0  # given back: a later collection can free it
    assert tracked(before)


def test_garbage_at_the_start_is_collected_not_frozen():
    class Cycle:
        pass

    cycle = Cycle()
    cycle.me = cycle
    witness = [cycle]
    del cycle
    witness.clear()  # only the cycle holds itself now
    with session.frozen_heap():
        assert not any(isinstance(o, Cycle) for o in gc.get_objects())
        assert gc.get_freeze_count() > 0


def test_settle_heap_freezes_only_inside_a_session():
    session.settle_heap()
    assert gc.get_freeze_count() == 0  # a caller's process is left as it is
    with session.frozen_heap():
        first = gc.get_freeze_count()
        phase_result = [Held() for _ in range(100)]
        session.settle_heap()  # a phase starts
        assert gc.get_freeze_count() >= first + 100
        assert not tracked(phase_result[0])
    assert gc.get_freeze_count() == 0


def test_nested_sessions_unfreeze_at_the_outer_end():
    with session.frozen_heap():
        with session.frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_a_callers_ray_gets_a_frozen_heap_too(monkeypatch):
    monkeypatch.setattr(session.ray, "is_initialized", lambda: True)
    with session.ray_session(None, None):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_the_trial_logger_settles_the_heap_when_a_phase_starts(monkeypatch):
    from sweeps import tracking

    calls = []
    monkeypatch.setattr(tracking, "settle_heap", lambda: calls.append(1))
    logger = tracking.MLflowTrialLogger.__new__(tracking.MLflowTrialLogger)  # no store, no writer thread
    logger.setup(stop=None, num_samples=1, total_num_samples=1)
    assert calls == [1]
