"""Flower's SuperNode, asking the SuperLink for work every half second when idle.

Flower 1.42's SuperNode waits a hard-coded 3 s after each poll that found no message
(`flwr.supernode.start_client_internal`), and no option changes it. Every exchange of a run then
costs each site up to 3 s of waiting: a round of SecAgg+ has four exchanges and the detector's
calibration a few more, so most of a short deployed run was spent idle. This entry point caps
the waits of that one module at `IDLE_POLL_SECONDS` and otherwise runs `flower-supernode`
unchanged (same arguments, same behaviour). Flower's own knob for the SuperExec's poll,
FLWR_SUPEREXEC_TASK_POLL_INTERVAL, is set beside it (`processes.FLWR_ENV`).
"""

from __future__ import annotations

import sys
import time

# One small gRPC call per poll: tens of sites asking twice a second cost a SuperLink nothing.
IDLE_POLL_SECONDS = 0.5


class _CappedWaits:
    """The `time` module as that Flower module sees it, with each sleep capped."""

    def __init__(self, cap: float):
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str):
        return getattr(time, name)


def main() -> None:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    start_client_internal.time = _CappedWaits(IDLE_POLL_SECONDS)
    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
