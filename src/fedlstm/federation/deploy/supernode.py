"""Flower's SuperNode, asking the SuperLink for work every half second when idle.

Flower 1.42's SuperNode waits a hard-coded 3 s after each poll that found no message
(`flwr.supernode.start_client_internal`), and no option changes it. Every exchange of a run then
costs each site up to 3 s of waiting: a round of SecAgg+ has four exchanges and the detector's
calibration a few more, so most of a short deployed run was spent idle. This entry point caps
the waits of that one module at `IDLE_POLL_SECONDS` and otherwise runs `flower-supernode`
unchanged (same arguments, same behaviour), but for one hint in its log where it says a refused
key is a connection failure (`_ActivationHint`). Flower's own knob for the SuperExec's poll,
FLWR_SUPEREXEC_TASK_POLL_INTERVAL, is set beside it (`processes.FLWR_ENV`).
"""

from __future__ import annotations

import logging
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


class _ActivationHint(logging.Filter):
    """Flower reports a SuperNode whose key the SuperLink does not know as "Failed to activate
    SuperNode. The SuperNode could not establish a connection to the SuperLink": read as a
    network problem, while the connection worked and the key was refused (the SuperLink's log
    alone says 'No SuperNode found with the given public key'). This adds the likely cause."""

    def __init__(self, private_key: str | None):
        super().__init__()
        public = f" ({private_key}.pub)" if private_key else ""
        self.hint = ("\nfedlstm: the SuperLink answered and refused to activate this SuperNode: "
                     f"its public key{public} is most likely not registered there. The "
                     "coordinator registers it with `flwr supernode register KEY.pub` "
                     "(`fedlstm deploy local` does this for its own sites).")

    def filter(self, record: logging.LogRecord) -> bool:
        if "Failed to activate SuperNode" in record.getMessage():
            record.msg, record.args = record.getMessage() + self.hint, ()
        return True


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args[:-1] else None


def main() -> None:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    start_client_internal.time = _CappedWaits(IDLE_POLL_SECONDS)
    logging.getLogger("flwr").addFilter(
        _ActivationHint(_option(sys.argv, "--auth-supernode-private-key")))
    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
