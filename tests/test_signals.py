"""The one way commands set stop-signal handlers (`fedlstm.signals`)."""

import signal
import threading

from fedlstm import signals


def test_handlers_are_set_for_the_block_and_the_earlier_ones_come_back():
    def mine(signum, frame):
        pass

    before = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    with signals.handling(dict.fromkeys(signals.STOP_SIGNALS, mine)) as previous:
        assert all(signal.getsignal(sig) is mine for sig in signals.STOP_SIGNALS)
        assert previous == before
    assert {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS} == before


def test_handlers_come_back_when_the_block_raises():
    before = signal.getsignal(signal.SIGTERM)
    try:
        with signals.handling({signal.SIGTERM: signal.SIG_IGN}):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_off_the_main_thread_nothing_is_set():
    seen = {}

    def run():
        with signals.handling({signal.SIGTERM: signal.SIG_IGN}) as previous:
            seen["previous"] = previous
            seen["during"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"previous": {}, "during": before}
