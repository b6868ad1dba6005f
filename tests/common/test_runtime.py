import os
import random
import signal

import numpy as np
import pytest
import torch

from common import runtime


def test_rng_state_round_trip_covers_every_generator():
    runtime.seed_everything(5)
    random.gauss(0, 1)  # fills Python's gaussian cache, which the state must carry
    state = runtime.rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    runtime.seed_everything(99)
    runtime.set_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and expected[3] == got[3]
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # weights_only-loadable


def test_pick_device():
    assert runtime.pick_device("cpu").type == "cpu"
    assert runtime.pick_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.pick_device("cuda")


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match="precision='fp8'"):
        runtime.autocast(torch.device("cpu"), "fp8")


def test_stop_request_catches_sigterm_then_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with runtime.StopRequest() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_single_process_distributed_is_a_noop(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = runtime.init_distributed()
    assert info.world_size == 1 and info.is_main and not info.enabled


def test_device_name_says_what_a_run_ran_on(monkeypatch):
    from common.runtime import device_name

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert device_name(torch.device("cpu")) == "cpu (2 threads)"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert device_name(torch.device("cpu")) == "cpu (1 thread)"
