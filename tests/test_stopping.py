"""When training stops early: the divergence stop, stop signals (stopping.py)."""
import math
import os
import signal
import types

import stopping


def test_the_divergence_stop_records_the_first_non_finite_batch_counted_from_1():
    stop = stopping.StopOnDivergence(batch=2)  # resumed 2 batches into the first epoch
    stop.set_model(types.SimpleNamespace(stop_training=False))
    stop.on_epoch_begin(0)
    stop.on_train_batch_end(0, {"loss": 1.0})
    assert stop.diverged is None and not stop.model.stop_training
    stop.on_train_batch_end(1, {"loss": math.inf})
    stop.on_train_batch_end(2, {"loss": math.nan})  # the first one is kept
    assert stop.diverged == (1, 4, math.inf) and stop.model.stop_training
    stop.on_epoch_end(0)
    assert stop.done == 0  # the next epoch counts from its first batch


def test_stop_signals_records_a_signal_and_puts_the_handlers_back(tmp_path):
    before = [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)]
    saver = types.SimpleNamespace(signal=None)
    with stopping.stop_signals(saver):
        os.kill(os.getpid(), signal.SIGTERM)
    assert saver.signal == signal.SIGTERM
    assert [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)] == before
